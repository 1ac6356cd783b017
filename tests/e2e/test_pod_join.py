"""The kube-state-metrics join of docs/metrics.md, run in a real Prometheus.

A child process in a cgroup named like a Kubernetes pod's container (systemd driver:
``kubepods-besteffort-pod<uid>.slice/cri-containerd-<64 hex>.scope``) holds a cgroup_skb
program attached by a BPF link to that same cgroup, and sends datagrams so the program runs.
``bpftop-otel --owner-series --attachment-series`` exports the program's owner and attachment
series, both with ``k8s_pod_uid``.  A second loopback target serves what kube-state-metrics
would for that pod: ``kube_pod_info{namespace="shop",pod="cart-0",uid=...} 1``.  Prometheus
scrapes both every second; each query of the documentation's join table, exactly as printed,
must then give the pod's name and namespace for our series, and the Grafana dashboard's
cost-by-pod panel must give the pod's CPU.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kernel_progs import holding_child
from peers import Cli, Prometheus, cli_env, free_port, wait_for_port, wait_until

from otel_bpf.demo import cgroup

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
METRICS_DOC = ROOT / "docs" / "metrics.md"
DASHBOARD = ROOT / "collector-config" / "grafana" / "bpf-programs.json"
JOIN_TABLE = "| from kube-state-metrics | PromQL |"
POD_UID = str(uuid.uuid4())
CONTAINER_ID = "c0ffee" + "0123456789abcdef" * 3 + "0a1b2c3d4e"
SLICE_PREFIX = "otel-bpf-test-"
PROGRAM = "otel_t_podjoin"

HOLDER = """
import os, socket, sys, threading, time
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import AttachType, ProgType
from otel_bpf.kernel.links import link_create
from otel_bpf.kernel.loader import load_program, program_id
fd = load_program(ProgType.CGROUP_SKB,
                  asm.assemble([asm.mov64_imm(asm.R0, 1), asm.exit_()]), %(name)r,
                  expected_attach_type=AttachType.CGROUP_INET_EGRESS)
target = os.open(%(cgroup)r, os.O_RDONLY | os.O_DIRECTORY)
link = link_create(fd, target, AttachType.CGROUP_INET_EGRESS)
os.close(target)

def send():
    # Egress traffic from this cgroup (once the process is in it) runs the program.
    # A socket belongs to the cgroup its process was in when it was made: a new one each
    # time, so the datagrams leave from the container's cgroup once the test moved us.
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"x", ("127.0.0.1", 9))
        time.sleep(0.01)

threading.Thread(target=send, daemon=True).start()
print(program_id(fd), flush=True)
sys.stdin.read()
"""

KUBE_POD_INFO = "".join(
    [
        "# HELP kube_pod_info Information about pod.\n",
        "# TYPE kube_pod_info gauge\n",
        f'kube_pod_info{{namespace="shop",pod="cart-0",uid="{POD_UID}",host_ip="10.0.0.1",'
        'pod_ip="10.1.0.7",node="node-1",created_by_kind="StatefulSet",created_by_name="cart",'
        'priority_class="",host_network="false"} 1\n',
        # Another pod on the node, which no BPF program serves: the join leaves it out.
        f'kube_pod_info{{namespace="kube-system",pod="coredns-0",uid="{uuid.uuid4()}",'
        'host_ip="10.0.0.1",pod_ip="10.1.0.8",node="node-1",created_by_kind="ReplicaSet",'
        'created_by_name="coredns",priority_class="",host_network="false"} 1\n',
    ]
)


def join_queries() -> dict[str, str]:
    """Row title -> the PromQL of docs/metrics.md's kube-state-metrics join table."""
    lines = METRICS_DOC.read_text().splitlines()
    start = lines.index(JOIN_TABLE) + 2
    found = {}
    for row in lines[start:]:
        if not row.startswith("|"):
            break
        title, query = (cell.strip() for cell in row.strip("|").split("|"))
        (promql,) = re.findall(r"`([^`]*)`", query)
        found[title] = promql
    return found


def pod_panel_query() -> str:
    """The dashboard's cost-by-pod query, Grafana's variables filled in as it would."""
    dashboard = json.loads(DASHBOARD.read_text())
    (expr,) = [
        t["expr"] for p in dashboard["panels"] for t in p["targets"] if "kube_pod_info" in t["expr"]
    ]
    for variable, value in {"$__rate_interval": "10s", "$instance": ".*"}.items():
        expr = expr.replace(variable, value)
    return str(expr)


class _KubeStateMetrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = KUBE_POD_INFO.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def kube_state_metrics() -> Iterator[str]:
    """A loopback endpoint serving the static kube_pod_info series; yields host:port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KubeStateMetrics)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _sweep_stale(mount: str) -> None:
    """Directories left by a run that was killed (its pid no longer alive)."""
    for slice_dir in glob.glob(os.path.join(mount, f"{SLICE_PREFIX}*.slice")):
        pid = os.path.basename(slice_dir)[len(SLICE_PREFIX) : -len(".slice")]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                for path in sorted(glob.glob(os.path.join(slice_dir, "**"), recursive=True))[::-1]:
                    if os.path.isdir(path):
                        os.rmdir(path)


def _remove(path: str) -> None:
    deadline = time.monotonic() + 5
    while not cgroup.remove(path) and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def pod_container() -> Iterator[tuple[int, int]]:
    """A child holding a program attached to, and running in, a pod-like container cgroup:
    ``(child pid, program id)``."""
    mount = cgroup.cgroup2_mount()
    _sweep_stale(mount)
    made: list[str] = []
    try:
        made.append(cgroup.create(f"{SLICE_PREFIX}{os.getpid()}.slice"))
        pod_slice = f"kubepods-besteffort-pod{POD_UID.replace('-', '_')}.slice"
        made.append(cgroup.create(pod_slice, made[-1]))
        made.append(cgroup.create(f"cri-containerd-{CONTAINER_ID}.scope", made[-1]))
        scope = made[-1]
        with holding_child(HOLDER % {"name": PROGRAM, "cgroup": scope}) as child:
            home = cgroup.current_cgroup(child.pid)
            with open(os.path.join(scope, "cgroup.procs"), "w") as f:
                f.write(str(child.pid))
            try:
                yield child.pid, child.prog_id
            finally:
                with open(os.path.join(home, "cgroup.procs"), "w") as f:
                    f.write(str(child.pid))
    finally:
        for path in reversed(made):
            _remove(path)
            assert not os.path.exists(path), f"{path} remains"


def test_kube_state_metrics_join_names_the_pod(
    tmp_path: Path, pod_container: tuple[int, int]
) -> None:
    pid, prog_id = pod_container
    queries = join_queries()
    assert len(queries) == 3, queries
    port = free_port()
    args = ["--exporter", "prometheus", "--prometheus-port", str(port), "--interval", "1",
            "--owner-series", "--attachment-series", "--name", PROGRAM]  # fmt: skip
    with kube_state_metrics() as ksm, Cli(tmp_path, args, cli_env()) as cli:
        assert wait_for_port(port, 30, cli.proc), f"no scrape endpoint\n{cli.describe()}"
        jobs = {"kube-state-metrics": ksm}
        with Prometheus(tmp_path / "prometheus", f"127.0.0.1:{port}", more_jobs=jobs) as prom:
            ours = f'bpf_program_id="{prog_id}"'

            def scraped() -> bool:
                owner = prom.query(f"bpf_program_owner{{{ours}}}")
                attachment = prom.query(f"bpf_program_attachment{{{ours}}}")
                # A few scrapes of the program's run time, so that rate() has a value.
                runs = prom.query(
                    f"count_over_time(bpf_program_run_time_seconds_total{{{ours}}}[1m])"
                )
                return bool(owner and attachment and prom.query("kube_pod_info") and runs
                            and float(runs[0]["value"][1]) >= 3)  # fmt: skip

            assert wait_until(scraped, 30, 1.0), f"series never scraped\n{cli.describe()}"
            # The Prometheus names docs/metrics.md gives, and the attributes on them.
            (owner,) = prom.query(f"bpf_program_owner{{{ours}}}")
            assert owner["metric"]["process_pid"] == str(pid)
            assert owner["metric"]["k8s_pod_uid"] == POD_UID
            assert owner["metric"]["container_id"] == CONTAINER_ID
            (attachment,) = prom.query(f"bpf_program_attachment{{{ours}}}")
            labels = attachment["metric"]
            assert labels["k8s_pod_uid"] == POD_UID and labels["container_id"] == CONTAINER_ID
            assert labels["bpf_attach_kind"] == "cgroup" and labels["bpf_attach_via"] == "link"
            assert labels["bpf_attach_type"] == "cgroup_inet_egress"
            assert labels["bpf_attach_target"].endswith(f"cri-containerd-{CONTAINER_ID}.scope")

            report = []
            for title, promql in queries.items():
                result = prom.query(promql)
                report.append(f"{title}: {promql}\n  -> {result}")
                assert result, "\n".join(report)
                for row in result:
                    got = row["metric"]
                    # Our program's series, named by the pod's name and namespace; the other
                    # pod has no program, so the join leaves it out.
                    assert (got["namespace"], got["pod"]) == ("shop", "cart-0"), report[-1]
                    assert got.get("bpf_program_id", str(prog_id)) == str(prog_id), report[-1]
            by_pod = prom.query(queries["CPU used by each pod's programs"])
            assert [r["metric"] for r in by_pod] == [{"namespace": "shop", "pod": "cart-0"}]
            assert float(by_pod[0]["value"][1]) > 0, "\n".join(report)

            def panel() -> list[dict[str, Any]]:
                return prom.query(pod_panel_query())

            shown = wait_until(panel, 15, 1.0)
            assert shown, pod_panel_query()
            assert {(r["metric"]["namespace"], r["metric"]["pod"]) for r in shown} == {
                ("shop", "cart-0")
            }
            print("\n".join(report))
        cli.signal(signal.SIGTERM)
        assert cli.wait(30) == 0, cli.describe()
    assert "Traceback" not in cli.stderr()
