"""The bpftop-otel container of collector-config/kubernetes/daemonset.yaml, run without Kubernetes.

The container's own ``args`` and ``env`` are taken from the manifest and run as Kubernetes
would run them: uid 0 holding only the capabilities the manifest adds (setpriv limits the
bounding set, as the container runtime does after ``drop: [ALL]``). Only the export target
and the intervals are appended, so that a real OTLP collector (rotel) on loopback receives
the metrics within seconds. The metrics of the demo programs must arrive, with the resource
attributes the manifest sets.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from peers import Rotel, cli_command, cli_env, tail, wait_until

from otel_bpf.demo import PROGRAM_NAMES
from otel_bpf.otel import names

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

yaml = pytest.importorskip("yaml")

MANIFEST = Path(__file__).resolve().parents[2] / "collector-config/kubernetes/daemonset.yaml"
NODE_NAME = "node-e2e-1"


def container() -> dict[str, Any]:
    with MANIFEST.open() as f:
        (daemonset,) = [d for d in yaml.safe_load_all(f) if d and d["kind"] == "DaemonSet"]
    (bpftop,) = daemonset["spec"]["template"]["spec"]["containers"]
    return dict(bpftop)


def container_env(spec: dict[str, Any]) -> dict[str, str]:
    """The manifest's env, with the downward API and $(VAR) references resolved."""
    env: dict[str, str] = {}
    for item in spec["env"]:
        if "valueFrom" in item:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
            env[item["name"]] = NODE_NAME
        else:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
    return env


def test_daemonset_container_exports_with_only_its_capabilities(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not installed (Debian package util-linux)")
    from otel_bpf.demo import DemoWorkload

    spec = container()
    caps = [c.lower() for c in spec["securityContext"]["capabilities"]["add"]]
    listed = ",".join(["-all", *(f"+{c}" for c in caps)])
    out, err = tmp_path / "bpftop-otel.out", tmp_path / "bpftop-otel.err"
    with Rotel(tmp_path / "rotel") as rotel, DemoWorkload() as demo:
        command = [
            setpriv, "--reuid=0", "--regid=0", "--clear-groups", f"--bounding-set={listed}",
            f"--inh-caps={listed}", f"--ambient-caps={listed}", "--no-new-privs", "--",
            *cli_command(), *spec["args"],
            "--endpoint", rotel.grpc_url, "--interval", "0.5", "--export-interval", "1",
        ]  # fmt: skip
        env = cli_env(**container_env(spec))
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                command, env=env, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, cwd="/"
            )
        try:
            ids = {str(i) for i in demo.program_ids.values()}

            def arrived() -> bool:
                got = {
                    p.attributes.get(names.PROGRAM_NAME)
                    for p in rotel.points()
                    if p.metric == names.RUNS.name and p.attributes.get(names.PROGRAM_ID) in ids
                }
                return got == set(PROGRAM_NAMES)

            assert wait_until(arrived, 60), (
                f"demo programs never arrived (caps {caps})\n{tail(err)}\nrotel:\n{tail(rotel.out)}"
            )
        finally:
            proc.terminate()
            status = proc.wait(30)
    assert status == 0, tail(err)
    points = [p for p in rotel.points() if p.attributes.get(names.PROGRAM_ID) in ids]
    resource = points[-1].resource
    assert resource["host.name"] == NODE_NAME and resource["k8s.node.name"] == NODE_NAME
    assert resource["service.instance.id"] == NODE_NAME
    assert resource["service.name"] == "bpftop-otel"
