"""What the ``netlink`` attach-point source costs per discovery (run as root).

    python benchmarks/bench_attach_netlink.py [--interfaces 20,100] [--namespaces 1,10,50]

Runs in a network namespace of its own (the host's devices are never touched).  There it
makes ``N`` interfaces (veth pairs), each with an XDP program set through netlink and a
clsact qdisc with two cls_bpf filters (ingress and egress), and prints the median
milliseconds of one discovery's visit of the namespace (link dump, qdisc dump, two filter
dumps a device, action dump, tcx queries) with the attachments made from it, and each part
alone.  Then ``M`` other namespaces (child processes, one veth pair each, one of its ends
with XDP and two filters) are visited by the worker thread too: how the cost grows with
namespaces.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from _bench import load_average, machine, median_s

from otel_bpf.demo import netns
from otel_bpf.kernel import asm
from otel_bpf.kernel import netlink as nl
from otel_bpf.kernel._uapi import AttachType, ProgType
from otel_bpf.kernel.attach_netlink import (
    ScanWants,
    _queried,
    link_dump_request,
    netlink_attachments,
    parse_filter,
    parse_link,
    scan_namespaces,
    tc_request,
)
from otel_bpf.kernel.loader import load_owned_program
from otel_bpf.kernel.namespaces import _netns_inode, network_namespaces

XDP_PASS = asm.assemble([asm.mov64_imm(asm.R0, 2), asm.exit_()])
RETURN_0 = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])

# A child holding a namespace with one veth pair, XDP and two filters on one end.
HOLDER = """
import sys
from otel_bpf.demo import netns
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import AttachType, ProgType
from otel_bpf.kernel.loader import load_owned_program
from otel_bpf.kernel.namespaces import _netns_inode, network_namespaces
netns.unshare_net()
netns.disable_ipv6()
netns.create_veth("b0", "b1")
xdp = load_owned_program(ProgType.XDP, asm.assemble([asm.mov64_imm(asm.R0, 2), asm.exit_()]),
                         "bench_nl_x", expected_attach_type=AttachType.XDP)
cls = load_owned_program(ProgType.SCHED_CLS, asm.assemble([asm.mov64_imm(asm.R0, 0),
                         asm.exit_()]), "bench_nl_c")
netns.set_xdp(xdp, "b0")
netns.add_clsact("b0")
netns.add_bpf_filter(cls, "b0", ingress=True, priority=1)
netns.add_bpf_filter(cls, "b0", ingress=False, priority=1)
print("ready", flush=True)
sys.stdin.read()
"""


def equip(names: list[str], xdp: object, cls: object) -> None:
    for name in names:
        netns.set_xdp(xdp, name)  # type: ignore[arg-type]
        netns.add_clsact(name)
        netns.add_bpf_filter(cls, name, ingress=True, priority=1)  # type: ignore[arg-type]
        netns.add_bpf_filter(cls, name, ingress=False, priority=1)  # type: ignore[arg-type]


def own_only() -> dict[int, str]:
    import os

    return {os.stat("/proc/self/ns/net").st_ino: "/proc/self/ns/net"}


def parts(ifindexes: list[int], passes: int) -> str:
    sock = nl.RouteSocket()

    def links() -> None:
        for m in sock.dump(nl.RTM_GETLINK, link_dump_request()):
            parse_link(m.payload)

    def filters() -> None:
        for i in ifindexes:
            for parent in (nl.TC_INGRESS_PARENT, nl.TC_EGRESS_PARENT):
                for m in sock.dump(nl.RTM_GETTFILTER, tc_request(i, parent)):
                    parse_filter(m.payload)

    def queries() -> None:
        for i in ifindexes:
            _queried(i, AttachType.TCX_INGRESS)
            _queried(i, AttachType.TCX_EGRESS)

    out = (
        f"link dump {median_s(links, passes) * 1e3:.2f} ms, "
        f"{2 * len(ifindexes)} filter dumps {median_s(filters, passes) * 1e3:.2f} ms, "
        f"{2 * len(ifindexes)} tcx queries {median_s(queries, passes) * 1e3:.2f} ms"
    )
    sock.close()
    return out


def measure(label: str, spaces: dict[int, str], wants: ScanWants, passes: int) -> str:
    def discovery() -> object:
        return netlink_attachments(scan_namespaces(wants, spaces).values())

    found = discovery()
    count = sum(len(v) for v in found.values())  # type: ignore[attr-defined]
    return f"{label}: {median_s(discovery, passes) * 1e3:7.2f} ms ({count} attachments)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interfaces", default="20,100")
    parser.add_argument("--namespaces", default="1,10,50")
    parser.add_argument("--passes", type=int, default=30)
    args = parser.parse_args()
    print(machine(), "|", load_average())
    netns.unshare_net()
    netns.disable_ipv6()
    xdp = load_owned_program(
        ProgType.XDP, XDP_PASS, "bench_nl_xdp", expected_attach_type=AttachType.XDP
    )
    cls = load_owned_program(ProgType.SCHED_CLS, RETURN_0, "bench_nl_cls")
    all_types = ScanWants()
    holders: list[subprocess.Popen[str]] = []
    try:
        for count in sorted(int(n) for n in args.namespaces.split(",")):
            while len(holders) < count:
                child = subprocess.Popen(
                    [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
                holders.append(child)
                assert child.stdout is not None and child.stdout.readline().strip() == "ready"
            others = {
                _netns_inode(f"/proc/{h.pid}/ns/net"): f"/proc/{h.pid}/ns/net" for h in holders
            }
            spaces = {**own_only(), **{i: p for i, p in others.items() if i is not None}}
            label = f"this namespace (lo) + {count:>3} others x 3 devices"
            print(measure(label, spaces, all_types, max(5, args.passes // 3)))
    finally:
        for child in holders:
            child.kill()
            child.wait(10)
    made: list[str] = []
    for count in sorted(int(n) for n in args.interfaces.split(",")):
        while len(made) < count:
            pair = [f"bv{len(made)}", f"bv{len(made) + 1}"]
            netns.create_veth(*pair)
            equip(pair, xdp, cls)
            made.extend(pair)
        spaces = own_only()
        print(f"{count} interfaces (XDP + 2 cls_bpf filters each), one namespace:")
        print("  " + measure("whole source, xdp+tc+tcx wanted", spaces, all_types, args.passes))
        xdp_only = ScanWants(tc=False, actions=False, query=False)
        print("  " + measure("only XDP programs loaded     ", spaces, xdp_only, args.passes))
        print("  parts: " + parts([netns.ifindex(n) for n in made], args.passes))
    start = time.perf_counter()
    listed = network_namespaces()
    took = (time.perf_counter() - start) * 1e3
    print(
        f"listing the namespaces (network_namespaces(), /proc scan): {took:.2f} ms, {len(listed)}"
    )


if __name__ == "__main__":
    main()
