"""What one attach-point discovery costs on a busy host (run as root).

    python benchmarks/bench_attach_discovery.py [--programs 1000] [--cgroups 100]
        [--interfaces 20] [--runs 30] [--baseline REF]

Builds the host of issue 17's cost target, then times full runs of
:class:`~otel_bpf.kernel.attach_discovery.AttachmentDiscovery` (interval 0: every ``get`` is a
discovery) with every source :func:`default_sources` lists, in total and per source:

* ``--cgroups`` cgroups under ``<cgroup2>/otel-bpf-bench-<pid>.slice``, named like containers
  (half ``docker-<64 hex>.scope``, half ``kubepods-besteffort-pod<uid>.slice/
  cri-containerd-<64 hex>.scope``), each with two ``cgroup_skb`` programs: inet ingress by
  a link (``BPF_LINK_CREATE``), inet egress by ``BPF_PROG_ATTACH`` with
  ``BPF_F_ALLOW_MULTI``;
* ``--interfaces`` interfaces (veth pairs in a private network namespace, made by a child
  process that holds their programs): even ones with an XDP link and tcx ingress and egress
  links, odd ones with XDP set through netlink (generic mode) and a clsact qdisc with
  ``cls_bpf`` ingress and egress filters;
* the rest of ``--programs``: half attached to rarely firing raw tracepoints by link, half
  socket filters, every other one attached to a UDP socket of this process.

The ``prog_attach`` source is timed as discovery runs it (the ``iter/cgroup`` program where the
kernel loads it) and, in a line of its own, with its cgroup query walk (what older kernels
do).  ``--baseline REF`` times the same host again with the otel_bpf of a commit (or a checkout
directory) in a child Python, alternating with this one, so both are measured under the
same load.  Everything is removed at exit, Ctrl-C included: links and programs closed, the
child killed (its namespace and interfaces go with it), the cgroups removed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from _bench import checkout, load_average, machine, raise_nofile

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import (
    BPF_F_ALLOW_MULTI,
    AttachType,
    Cmd,
    ProgAttachAttr,
    ProgType,
    RawTracepointOpenAttr,
)
from otel_bpf.kernel.attach import Names
from otel_bpf.kernel.attach_discovery import AttachmentDiscovery, Source, default_sources
from otel_bpf.kernel.links import link_create
from otel_bpf.kernel.loader import load_program
from otel_bpf.kernel.syscall import bpf

HERE = Path(__file__).resolve().parent
TREE = HERE.parent
RETURN_0 = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])
RETURN_1 = asm.assemble([asm.mov64_imm(asm.R0, 1), asm.exit_()])
SO_ATTACH_BPF = 50
# Raw tracepoints that fire seldom: hundreds of programs on them cost the host nothing.
QUIET_TRACEPOINTS = ("sched_process_hang", "sched_kthread_stop")
PREFIX = "bench_ad"


# The child: a private network namespace, veth pairs, XDP and tcx links or XDP and tc
# filters through netlink on every interface; it prints "ready <programs>" and holds everything
# until stdin closes.
CHILD = r"""
import os, signal, socket, struct, sys
# Ctrl-C reaches the whole process group: the parent cleans up and kills this child.
signal.signal(signal.SIGINT, signal.SIG_IGN)
from otel_bpf.demo import netns
from otel_bpf.kernel import asm
from otel_bpf.kernel import netlink as nl
from otel_bpf.kernel._uapi import AttachType, ProgType
from otel_bpf.kernel.links import link_create
from otel_bpf.kernel.loader import load_program
from otel_bpf.kernel.netlink import XDP_FLAGS_SKB_MODE

count = int(sys.argv[1])
XDP_PASS = asm.assemble([asm.mov64_imm(asm.R0, 2), asm.exit_()])
RETURN_0 = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])
netns.unshare_net()
netns.disable_ipv6()
names = []
for pair in range((count + 1) // 2):
    a, b = f"bvx{pair}a", f"bvx{pair}b"
    netns.create_veth(a, b)
    names += [a, b]
names = names[:count]
for name in names:
    netns.set_link_up(name)


held = []
for i, name in enumerate(names):
    ifindex = netns.ifindex(name)
    xdp = load_program(
        ProgType.XDP, XDP_PASS, f"bench_ad_xdp{i}", expected_attach_type=AttachType.XDP
    )
    held.append(xdp)
    if i % 2:
        # Odd interfaces: what older loaders and `ip`/`tc` do, through netlink.
        netns.set_xdp(xdp, name, generic=True)
        netns.add_clsact(name)
        for ingress in (True, False):
            tc = load_program(ProgType.SCHED_CLS, RETURN_0, f"bench_ad_tc{i}")
            held.append(tc)
            netns.add_bpf_filter(tc, name, ingress=ingress, priority=1)
    else:
        held.append(link_create(xdp, ifindex, AttachType.XDP, nl.XDP_FLAGS_SKB_MODE))
        for at in (AttachType.TCX_INGRESS, AttachType.TCX_EGRESS):
            tc = load_program(ProgType.SCHED_CLS, RETURN_0, f"bench_ad_tcx{i}")
            held += [tc, link_create(tc, ifindex, at)]
print("ready", 3 * len(names), flush=True)
sys.stdin.read()
"""


class Host:
    """The scenario's kernel objects; :meth:`close` releases every one."""

    def __init__(self, cgroup_root: str) -> None:
        self.fds: list[int] = []
        self.cgroup_dirs: list[str] = []  # parents first
        self.child: subprocess.Popen[str] | None = None
        self.top = os.path.join(cgroup_root, f"otel-bpf-bench-{os.getpid()}.slice")
        self.counts: dict[str, int] = {}

    def keep(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def mkdir(self, path: str) -> str:
        os.mkdir(path)
        self.cgroup_dirs.append(path)
        return path

    def close(self) -> None:
        if self.child is not None:
            with contextlib.suppress(OSError):
                self.child.kill()
            self.child.wait(30)
            self.child = None
        while self.fds:
            with contextlib.suppress(OSError):
                os.close(self.fds.pop())
        # Programs attached with BPF_PROG_ATTACH go with their cgroup.
        deadline = time.monotonic() + 10
        while self.cgroup_dirs and time.monotonic() < deadline:
            path = self.cgroup_dirs[-1]
            try:
                os.rmdir(path)
            except FileNotFoundError:
                pass
            except OSError:
                time.sleep(0.05)  # a cgroup's last reference goes a moment after its links
                continue
            self.cgroup_dirs.pop()
        for path in self.cgroup_dirs:
            print(f"warning: could not remove {path}", file=sys.stderr)


def build(host: Host, programs: int, cgroups: int, interfaces: int) -> None:
    """Load and attach the scenario's programs into ``host``."""
    # The interfaces first: the child's programs count towards the total.
    child = host.child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(interfaces)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(TREE)},
    )
    assert child.stdout is not None
    line = child.stdout.readline().split()
    if line[:1] != ["ready"]:
        raise SystemExit("the network namespace child failed (see above)")
    net_programs = int(line[1])

    host.mkdir(host.top)
    leaves = []
    for i in range(cgroups):
        hexid = uuid.uuid4().hex + uuid.uuid4().hex
        if i % 2:
            pod = str(uuid.uuid4()).replace("-", "_")
            parent = host.mkdir(os.path.join(host.top, f"kubepods-besteffort-pod{pod}.slice"))
            leaves.append(host.mkdir(os.path.join(parent, f"cri-containerd-{hexid}.scope")))
        else:
            leaves.append(host.mkdir(os.path.join(host.top, f"docker-{hexid}.scope")))
    for i, leaf in enumerate(leaves):
        cg = os.open(leaf, os.O_RDONLY | os.O_DIRECTORY)
        try:
            ingress = host.keep(
                load_program(
                    ProgType.CGROUP_SKB,
                    RETURN_1,
                    f"{PREFIX}_cgl{i}",
                    expected_attach_type=AttachType.CGROUP_INET_INGRESS,
                )
            )
            host.keep(link_create(ingress, cg, AttachType.CGROUP_INET_INGRESS))
            egress = host.keep(
                load_program(
                    ProgType.CGROUP_SKB,
                    RETURN_1,
                    f"{PREFIX}_cga{i}",
                    expected_attach_type=AttachType.CGROUP_INET_EGRESS,
                )
            )
            attr = ProgAttachAttr(
                target_fd=cg,
                attach_bpf_fd=egress,
                attach_type=AttachType.CGROUP_INET_EGRESS,
                attach_flags=BPF_F_ALLOW_MULTI,
            )
            bpf(Cmd.PROG_ATTACH, attr, leaf)
        finally:
            os.close(cg)

    rest = max(0, programs - net_programs - 2 * cgroups)
    sockets = 0
    raw_tp = rest // 2
    for i in range(rest):
        if i < raw_tp:
            prog = host.keep(load_program(ProgType.RAW_TRACEPOINT, RETURN_0, f"{PREFIX}_raw{i}"))
            tp = ctypes.create_string_buffer(QUIET_TRACEPOINTS[i % 2].encode())
            open_attr = RawTracepointOpenAttr(name=ctypes.addressof(tp), prog_fd=prog)
            host.keep(bpf(Cmd.RAW_TRACEPOINT_OPEN, open_attr, "raw tracepoint"))
        else:
            prog = host.keep(load_program(ProgType.SOCKET_FILTER, RETURN_0, f"{PREFIX}_idle{i}"))
            if i % 2:
                # Every other one on a socket of ours (SO_ATTACH_BPF), like a packet capture.
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog)
                host.keep(sock.detach())
                sockets += 1
    host.counts = {
        "programs": net_programs + 2 * cgroups + rest,
        "links": 3 * ((interfaces + 1) // 2) + cgroups + raw_tp,
        "netlink": 3 * (interfaces // 2),
        "prog_attach": cgroups,
        "sockets": sockets,
        "cgroups": cgroups,
        "cgroup_dirs": len(host.cgroup_dirs),
        "interfaces": interfaces,
        "raw_tp": raw_tp,
        "idle": rest - raw_tp,
    }


def host_programs() -> dict[int, str]:
    """Every program on the host: id -> type name (what the pass gives discovery)."""
    from otel_bpf.kernel.programs import SyscallSource
    from otel_bpf.kernel.source import SourceOptions

    with SyscallSource(SourceOptions(memlock=False)) as source:
        return {r.id: r.type for r in source.read().records}


def _timed(source: Source, times: dict[str, list[float]]) -> Source:
    spent = times.setdefault(source.name, [])

    def read(ctx: Any) -> Mapping[int, Any]:
        t0 = time.perf_counter()
        try:
            return source.read(ctx)
        finally:
            spent.append(time.perf_counter() - t0)

    return Source(source.name, read, source.close, source.own_programs)


def time_discovery(runs: int) -> dict[str, Any]:
    """``runs`` full discoveries with the default sources: seconds per run, total and per
    source, and what the last one found."""
    programs = host_programs()
    sources = default_sources()
    times: dict[str, list[float]] = {}
    names = Names()
    discovery = AttachmentDiscovery(0.0, sources=[_timed(s, times) for s in sources], names=names)
    total: list[float] = []
    found: Mapping[int, Any] = {}
    try:
        for run in range(runs + 1):
            t0 = time.perf_counter()
            found = discovery.get(programs)
            spent = time.perf_counter() - t0
            if run == 0:  # the warm-up: first scan of the cgroups, iterator load
                for spent_by in times.values():
                    spent_by.clear()
                continue
            total.append(spent)
    finally:
        discovery.close()
        for s in sources:  # the timing wrappers hide the sources' close()
            close: Callable[[], None] | None = getattr(s.read, "close", None)
            if close is not None:
                close()
    by_via: dict[str, int] = {}
    for attachments in found.values():
        for a in attachments:
            by_via[f"{a.kind}/{a.via}"] = by_via.get(f"{a.kind}/{a.via}", 0) + 1
    return {
        "total": total,
        "sources": times,
        "host_programs": len(programs),
        "attached_programs": sum(1 for a in found.values() if a),
        "attachments": dict(sorted(by_via.items())),
    }


def syscall_walk_ms(runs: int) -> list[float] | None:
    """The link walk without the iterator (every link by syscalls), when this tree has the
    choice."""
    try:
        from otel_bpf.kernel.attach import LinkWalk
    except ImportError:
        return None
    names = Names()
    out = []
    try:
        with LinkWalk(iterator=False) as walk:
            walk.read(names)
            for _ in range(runs):
                t0 = time.perf_counter()
                walk.read(names)
                out.append((time.perf_counter() - t0) * 1e3)
    finally:
        names.close()
    return out


def query_walk_ms(runs: int) -> list[float] | None:
    """The ``prog_attach`` source with its cgroup query walk (what kernels without the
    ``iter/cgroup`` program do), when this tree has the choice."""
    from otel_bpf.kernel.attach import read_link_attachments
    from otel_bpf.kernel.attach_discovery import DiscoveryContext
    from otel_bpf.kernel.attach_query import ProgAttachSource

    try:
        source = ProgAttachSource(iterator=False)  # type: ignore[call-arg]
    except TypeError:
        return None
    programs = host_programs()
    names = Names()
    out = []
    try:
        found = read_link_attachments(names)
        for run in range(runs + 1):
            ctx = DiscoveryContext(names, programs, {p: list(a) for p, a in found.items()})
            t0 = time.perf_counter()
            source.read(ctx)
            if run:  # the first: the warm-up
                out.append((time.perf_counter() - t0) * 1e3)
    finally:
        names.close()
    return out


def fmt(values_s: list[float], scale: float = 1e3) -> str:
    values = [v * scale for v in values_s]
    if not values:
        return "-"
    return f"{statistics.median(values):7.2f} ({min(values):.2f}-{max(values):.2f})"


def report(label: str, result: dict[str, Any]) -> None:
    runs = len(result["total"])
    print(f"  {label}: total {fmt(result['total'])} ms  [median (min-max) of {runs}]")
    for name, times in result["sources"].items():
        print(f"    {name:<12} {fmt(times)} ms")
    walk = result.get("syscall_walk_ms")
    if walk:
        print(f"    {'(links by syscalls only)':<12} {fmt(walk, 1.0)} ms")
    query = result.get("query_walk_ms")
    if query:
        print(f"    {'(prog_attach by the cgroup query walk)':<12} {fmt(query, 1.0)} ms")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=1000)
    parser.add_argument("--cgroups", type=int, default=100)
    parser.add_argument("--interfaces", type=int, default=20)
    parser.add_argument("--runs", type=int, default=30, help="timed discoveries per round")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds (alternating with the baseline)"
    )
    parser.add_argument("--baseline", help="a commit or checkout to time on the same host")
    parser.add_argument("--time-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.time_only:  # the baseline's child: time what is there, print JSON
        print(json.dumps(time_discovery(args.runs)))
        return

    from otel_bpf.kernel.attach import cgroup2_root

    raise_nofile(4 * args.programs)
    # Ctrl-C and SIGTERM both unwind through the finally below.
    signal.signal(signal.SIGTERM, _interrupt)
    host = Host(cgroup2_root())
    with contextlib.ExitStack() as stack:
        stack.callback(host.close)
        base_tree = stack.enter_context(checkout(args.baseline, TREE)) if args.baseline else None
        t0 = time.perf_counter()
        build(host, args.programs, args.cgroups, args.interfaces)
        print(machine(), "|", load_average())
        print(
            "scenario: {programs} programs ({links} links: {interfaces} interfaces x xdp/tcx, "
            "{cgroups} cgroup links, {raw_tp} raw_tp; {prog_attach} cgroup PROG_ATTACH; "
            "{idle} idle), {cgroups} cgroups ({cgroup_dirs} directories), "
            "{interfaces} interfaces".format(**host.counts),
            f"built in {time.perf_counter() - t0:.1f} s",
        )
        for round_no in range(args.rounds):
            result = time_discovery(args.runs)
            if round_no == 0:
                print(
                    f"host: {result['host_programs']} programs, "
                    f"{result['attached_programs']} attached; found {result['attachments']}"
                )
            result["syscall_walk_ms"] = syscall_walk_ms(args.runs)
            result["query_walk_ms"] = query_walk_ms(args.runs)
            print(f"round {round_no + 1} | {load_average()}")
            report("this tree", result)
            if base_tree is not None:
                env = {**os.environ, "PYTHONPATH": str(base_tree)}
                out = subprocess.run(
                    [sys.executable, __file__, "--time-only", "--runs", str(args.runs)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                if out.returncode != 0:
                    raise SystemExit(f"baseline failed: {out.stderr.strip()}")
                report(f"baseline {args.baseline}", json.loads(out.stdout.splitlines()[-1]))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
