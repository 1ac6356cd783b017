"""Attachments found through rtnetlink and named in the network namespace they live in, on the
real kernel: a child process unshares its own network namespace, makes veths there and
attaches

* an XDP program without a link (``IFLA_XDP``, generic mode) to ``nla0``,
* a clsact qdisc with a direct-action cls_bpf filter on ingress and one on egress of ``nla1``
  (made with :mod:`otel_bpf.kernel.netlink`),
* an XDP link on ``nlb0`` and a tcx link on ``nlb1``,

and the test, in its own namespace, expects each exactly, as ``<dev>@netns:<inode>``; the
XDP program held by a link (which ``IFLA_XDP`` shows too) only once; and nothing for a
program once it is detached.

act_bpf actions are decoded from hand-built messages only (tests/unit/test_netlink.py): the
test machines' kernels are built without CONFIG_NET_ACT_BPF.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from kernel_progs import TREE

from otel_bpf.kernel.attach import Names
from otel_bpf.kernel.attach_discovery import AttachmentDiscovery
from otel_bpf.records import Attachment

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

CHILD = """
import dataclasses, json, os, sys
from otel_bpf.demo import netns
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import AttachType, ProgType
from otel_bpf.kernel.attach_discovery import AttachmentDiscovery
from otel_bpf.kernel.links import create_owned_link
from otel_bpf.kernel.loader import load_owned_program, program_id

XDP_PASS = asm.assemble([asm.mov64_imm(asm.R0, 2), asm.exit_()])
RETURN_0 = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])
netns.unshare_net()
netns.disable_ipv6()
for a, b in (("nla0", "nlb0"), ("nla1", "nlb1")):
    netns.create_veth(a, b)
xdp = load_owned_program(ProgType.XDP, XDP_PASS, "otel_nl_xdp", expected_attach_type=AttachType.XDP)
xdpl = load_owned_program(ProgType.XDP, XDP_PASS, "otel_nl_xdpl", expected_attach_type=AttachType.XDP)
cls = load_owned_program(ProgType.SCHED_CLS, RETURN_0, "otel_nl_cls")
tcx = load_owned_program(ProgType.SCHED_CLS, RETURN_0, "otel_nl_tcx")
netns.set_xdp(xdp, "nla0", generic=True)
netns.add_clsact("nla1")
netns.add_bpf_filter(cls, "nla1", ingress=True, priority=1)
netns.add_bpf_filter(cls, "nla1", ingress=False, priority=2)
links = {
    "xdp_link": netns.attach_xdp(xdpl, "nlb0"),
    "tcx_link": create_owned_link(tcx, netns.ifindex("nlb1"), AttachType.TCX_INGRESS),
}
print(json.dumps({
    "netns": os.stat("/proc/self/ns/net").st_ino,
    "ids": {"xdp": program_id(xdp), "xdpl": program_id(xdpl), "cls": program_id(cls),
            "tcx": program_id(tcx)},
    "ifindex": {n: netns.ifindex(n) for n in ("nla0", "nla1", "nlb0", "nlb1")},
    "links": {k: v.id for k, v in links.items()},
}), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "xdp":
        netns.set_xdp(None, "nla0")
    elif cmd == "ingress":
        netns.delete_filters("nla1", ingress=True, priority=1)
    elif cmd == "egress":
        netns.delete_filters("nla1", ingress=False, priority=2)
    elif cmd in links:
        links.pop(cmd).close()
    elif cmd == "here":
        # Seen from inside: this namespace's devices are plain names.
        found = AttachmentDiscovery(0.0).get({program_id(cls): "sched_cls"})
        print(json.dumps([dataclasses.asdict(a) for a in found[program_id(cls)]]), flush=True)
        continue
    print("ok", flush=True)
"""


@dataclass
class Child:
    process: subprocess.Popen[str]
    state: dict[str, Any]

    def ask(self, command: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()


@contextmanager
def child_namespace() -> Iterator[Child]:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": TREE},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("{"), f"child failed to set up: {line!r}"
        yield Child(process, json.loads(line))
    finally:
        process.kill()
        process.wait(30)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


def test_netlink_and_link_attachments_in_another_namespace() -> None:
    with child_namespace() as child:
        ino, ids, ifx = child.state["netns"], child.state["ids"], child.state["ifindex"]
        assert ino != os.stat("/proc/self/ns/net").st_ino
        programs = {
            ids["xdp"]: "xdp",
            ids["xdpl"]: "xdp",
            ids["cls"]: "sched_cls",
            ids["tcx"]: "sched_cls",
        }

        def dev(name: str) -> dict[str, Any]:
            return {"ifindex": ifx[name], "ifname": name, "netns": ino}

        expected = {
            ids["xdp"]: [
                Attachment(
                    "xdp", "netlink", None, "xdp", f"nla0@netns:{ino}", **dev("nla0"), mode="skb"
                )
            ],
            ids["cls"]: [
                Attachment(
                    "tc", "netlink", None, None, f"nla1@netns:{ino}", **dev("nla1"),
                    direction="ingress", priority=1,
                ),
                Attachment(
                    "tc", "netlink", None, None, f"nla1@netns:{ino}", **dev("nla1"),
                    direction="egress", priority=2,
                ),
            ],
            # Held by a link, shown by IFLA_XDP too: reported once, as the link.
            ids["xdpl"]: [
                Attachment(
                    "xdp", "link", child.state["links"]["xdp_link"], "xdp", f"nlb0@netns:{ino}",
                    **dev("nlb0"),
                )
            ],
            ids["tcx"]: [
                Attachment(
                    "tcx", "link", child.state["links"]["tcx_link"], "tcx_ingress",
                    f"nlb1@netns:{ino}", **dev("nlb1"), direction="ingress",
                )
            ],
        }  # fmt: skip
        discovery = AttachmentDiscovery(0.0, names=Names())
        errors: list[str] = []

        def ours() -> dict[int, list[Attachment]]:
            found = discovery.get(programs, errors)
            return {p: list(found[p]) for p in programs if found.get(p)}

        assert ours() == expected
        assert errors == []

        # Seen from the child's own namespace, the same filters name plain devices.
        here = [Attachment(**a) for a in json.loads(child.ask("here"))]
        assert here == [
            Attachment(
                a.kind, a.via, a.link_id, a.attach_type, "nla1", ifindex=a.ifindex,
                ifname="nla1", netns=ino, direction=a.direction, priority=a.priority,
            )
            for a in expected[ids["cls"]]
        ]  # fmt: skip

        # Detached one by one: nothing is left for a program once it is.
        for command, gone in (
            ("xdp", {ids["xdp"]}),
            ("ingress", set()),
            ("egress", {ids["cls"]}),
            ("xdp_link", {ids["xdpl"]}),
            ("tcx_link", {ids["tcx"]}),
        ):
            assert child.ask(command) == "ok"
            if command == "ingress":
                expected[ids["cls"]] = expected[ids["cls"]][1:]
            for prog in gone:
                del expected[prog]
            assert ours() == expected, command
        assert ours() == {}
        discovery.close()
