"""``bpftop-otel --json --attachments``: where the demo's programs, and a filter on one of
the test's own sockets, are attached."""

from __future__ import annotations

import json
import os
import re
import socket

import pytest
from peers import cli_env, run_cli

from otel_bpf.demo import programs
from otel_bpf.demo import worker as demo_worker
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.attach import cgroup2_root
from otel_bpf.kernel.loader import attach_socket_filter, load_owned_program

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
    worker = int(re.findall(r"demo workload running \(pid (\d+)\)", line)[0])
    objs = {o["id"]: o for o in map(json.loads, proc.stdout.splitlines())}
    found = {name: objs[i]["attachments"] for name, i in ids.items()}

    (xdp,) = found[programs.XDP]
    assert (xdp["kind"], xdp["via"], xdp["attach_type"]) == ("xdp", "link", "xdp"), xdp
    assert isinstance(xdp["link_id"], int) and isinstance(xdp["ifindex"], int), xdp
    # The demo's veth lives in the worker's own network namespace: named there, with it.
    assert isinstance(xdp["netns"], int) and xdp["netns"] != os.stat("/proc/self/ns/net").st_ino
    assert xdp["ifname"] == demo_worker.VETH, xdp
    assert xdp["target"] == f"{demo_worker.VETH}@netns:{xdp['netns']}", xdp
    (cg,) = found[programs.CGROUP_SKB]
    assert (cg["kind"], cg["via"], cg["attach_type"]) == ("cgroup", "link", "cgroup_inet_egress")
    # The worker's own cgroup, which it made under the cgroup2 root.
    pattern = re.escape(cgroup2_root()) + "/" + programs.CGROUP_PREFIX + r"\d+"
    assert re.fullmatch(pattern, cg["cgroup_path"]) and cg["target"] == cg["cgroup_path"], cg
    assert isinstance(cg["cgroup_id"], int) and isinstance(cg["link_id"], int), cg
    # The socket filters are on the worker's receiving sockets, one socket each.
    fds = set()
    for name in (programs.SOCK, programs.SLOW):
        (sock,) = found[name]
        fds.add(sock["fd"])
        assert sock == {
            "kind": "socket",
            "via": "socket",
            "link_id": None,
            "attach_type": None,
            "target": f"pid {worker} fd {sock['fd']}",
            "pid": worker,
            "fd": sock["fd"],
            "comm": sock["comm"],
        }, sock
        assert isinstance(sock["fd"], int) and sock["comm"], sock
    assert len(fds) == 2


def test_socket_filter_attachment_in_json() -> None:
    """A filter on one of this test's own sockets: reported with exactly its pid and fd."""
    name = f"otel_e2e_sk{os.getpid() % 10000}"
    prog = load_owned_program(
        ProgType.SOCKET_FILTER, asm.assemble([asm.mov64_imm(asm.R0, -1), asm.exit_()]), name
    )
    with prog, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        attach_socket_filter(s, prog)
        proc = run_cli(
            [
                *("--json", "--count", "1", "--attachments", "--exporter", "none"),
                *("--name", name),
            ],
            timeout=60,
            env=cli_env(),
        )
        assert proc.returncode == 0, proc.stderr
        (obj,) = map(json.loads, proc.stdout.splitlines())
        with open("/proc/self/comm") as f:
            comm = f.read().rstrip("\n")
        assert obj["id"] == prog.id
        assert obj["attachments"] == [
            {
                "kind": "socket",
                "via": "socket",
                "link_id": None,
                "attach_type": None,
                "target": f"pid {os.getpid()} fd {s.fileno()}",
                "pid": os.getpid(),
                "fd": s.fileno(),
                "comm": comm,
            }
        ]
