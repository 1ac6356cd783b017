"""``bpftop-otel --json --attachments --demo``: where the demo's programs are attached."""

from __future__ import annotations

import json
import os
import re

import pytest
from peers import cli_env, run_cli

from otel_bpf.demo import programs, worker
from otel_bpf.kernel.attach import cgroup2_root

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def test_demo_attachments_in_json() -> None:
    proc = run_cli(
        [
            *("--json", "--count", "1", "--demo", "--attachments", "--exporter", "none"),
            *("--name", "otel_demo_*"),
        ],
        timeout=60,
        env=cli_env(),
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stderr.splitlines() if "demo workload running" in x)
    ids = {name: int(i) for name, i in re.findall(r"(otel_demo_\w+) id (\d+)", line)}
    objs = {o["id"]: o for o in map(json.loads, proc.stdout.splitlines())}
    found = {name: objs[i]["attachments"] for name, i in ids.items()}

    (xdp,) = found[programs.XDP]
    assert (xdp["kind"], xdp["via"], xdp["attach_type"]) == ("xdp", "link", "xdp"), xdp
    assert isinstance(xdp["link_id"], int) and isinstance(xdp["ifindex"], int), xdp
    # The demo's veth lives in the worker's own network namespace: named there, with it.
    assert isinstance(xdp["netns"], int) and xdp["netns"] != os.stat("/proc/self/ns/net").st_ino
    assert xdp["ifname"] == worker.VETH, xdp
    assert xdp["target"] == f"{worker.VETH}@netns:{xdp['netns']}", xdp
    (cg,) = found[programs.CGROUP_SKB]
    assert (cg["kind"], cg["via"], cg["attach_type"]) == ("cgroup", "link", "cgroup_inet_egress")
    # The worker's own cgroup, which it made under the cgroup2 root.
    pattern = re.escape(cgroup2_root()) + "/" + programs.CGROUP_PREFIX + r"\d+"
    assert re.fullmatch(pattern, cg["cgroup_path"]) and cg["target"] == cg["cgroup_path"], cg
    assert isinstance(cg["cgroup_id"], int) and isinstance(cg["link_id"], int), cg
    # Socket filters are attached to sockets, which are not looked up yet: nowhere found.
    assert found[programs.SOCK] == [] and found[programs.SLOW] == []
