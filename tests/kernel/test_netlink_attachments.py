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
from typing import Any

import pytest
from kernel_progs import netlink_child

from otel_bpf.kernel.attach import Names
from otel_bpf.kernel.attach_discovery import AttachmentDiscovery
from otel_bpf.records import Attachment

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]


def test_netlink_and_link_attachments_in_another_namespace() -> None:
    with netlink_child() as child:
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
