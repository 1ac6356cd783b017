"""``bpftop-otel --json --attachments``: programs attached through rtnetlink (XDP without a
link, cls_bpf filters on clsact) and through links, on veths in another process's network
namespace, shown exactly, with the device named ``<dev>@netns:<inode>``."""

from __future__ import annotations

import json

import pytest
from kernel_progs import netlink_child
from peers import cli_env, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def test_netlink_attachments_in_json() -> None:
    with netlink_child() as child:
        ino, ids, ifx = child.state["netns"], child.state["ids"], child.state["ifindex"]
        links = child.state["links"]
        proc = run_cli(
            [
                *("--json", "--count", "1", "--attachments", "--exporter", "none"),
                *("--name", "otel_nl_*"),
            ],
            timeout=60,
            env=cli_env(),
        )
        assert proc.returncode == 0, proc.stderr
    objs = {o["id"]: o for o in map(json.loads, proc.stdout.splitlines())}
    found = {name: objs[i]["attachments"] for name, i in ids.items()}

    def on(dev: str) -> dict[str, object]:
        return {
            "target": f"{dev}@netns:{ino}",
            "ifindex": ifx[dev],
            "ifname": dev,
            "netns": ino,
        }

    def tc(direction: str, priority: int) -> dict[str, object]:
        return {
            **{"kind": "tc", "via": "netlink", "link_id": None, "attach_type": None},
            **on("nla1"),
            **{"direction": direction, "priority": priority},
        }

    xdp = {"kind": "xdp", "via": "netlink", "link_id": None, "attach_type": "xdp"}
    assert found == {
        "xdp": [{**xdp, **on("nla0"), "mode": "skb"}],
        "cls": [tc("ingress", 1), tc("egress", 2)],
        # Held by a link, which IFLA_XDP shows too: once, as the link.
        "xdpl": [{**xdp, "via": "link", "link_id": links["xdp_link"], **on("nlb0")}],
        "tcx": [
            {
                **{"kind": "tcx", "via": "link", "link_id": links["tcx_link"]},
                **{"attach_type": "tcx_ingress", **on("nlb1"), "direction": "ingress"},
            }
        ],
    }
