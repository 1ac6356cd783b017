"""What the ``prog_attach`` attachment source costs with N cgroups (run as root).

    python benchmarks/bench_attach_query.py [--cgroups 100] [--passes 50] [--programs 1000]

Builds a Kubernetes-like tree under ``<cgroup2>/otel-bpf-bench-<pid>``
(``kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/
cri-containerd-<64 hex>.scope``, a pod slice and its container scope per pod, until there
are N cgroups), attaches a cgroup_skb program to every container scope with
``BPF_PROG_ATTACH`` (``BPF_F_ALLOW_MULTI``), and prints the median milliseconds of one read
of the source (every cgroup of the host opened once and queried at each attach type the
loaded program types could use) for a few sets of loaded program types, beside
``--programs`` programs of other types (which cost no query).  Everything is detached and
removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid

from _bench import load_average, machine, median_s

from otel_bpf.demo import cgroup
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import (
    BPF_F_ALLOW_MULTI,
    AttachType,
    Cmd,
    ProgAttachAttr,
    ProgType,
)
from otel_bpf.kernel.attach import Names
from otel_bpf.kernel.attach_discovery import AttachmentDiscovery, DiscoveryContext
from otel_bpf.kernel.attach_query import ProgAttachSource
from otel_bpf.kernel.loader import load_program, program_id
from otel_bpf.kernel.syscall import bpf

RETURN_1 = asm.assemble([asm.mov64_imm(asm.R0, 1), asm.exit_()])
EGRESS = AttachType.CGROUP_INET_EGRESS


def build(top: str, count: int) -> list[str]:
    """The container scopes of a tree of ``count`` cgroups under ``top``."""
    qos = os.path.join(top, "kubepods.slice", "kubepods-besteffort.slice")
    os.makedirs(qos)
    made, scopes = 2, []
    while made + 2 <= count:
        uid = str(uuid.uuid4())
        pod = os.path.join(qos, f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice")
        scope = os.path.join(pod, f"cri-containerd-{os.urandom(32).hex()}.scope")
        os.makedirs(scope)
        scopes.append(scope)
        made += 2
    return scopes


def remove_tree(top: str) -> None:
    for path, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cgroups", type=int, default=100)
    parser.add_argument("--passes", type=int, default=50)
    parser.add_argument("--programs", type=int, default=1000)
    args = parser.parse_args()
    mount = cgroup.cgroup2_mount()
    top = os.path.join(mount, f"otel-bpf-bench-{os.getpid()}")
    prog = load_program(ProgType.CGROUP_SKB, RETURN_1, "bench_pa", expected_attach_type=EGRESS)
    attached: list[int] = []
    print(machine(), "|", load_average())
    try:
        scopes = build(top, args.cgroups)
        for scope in scopes:
            fd = cgroup.open_dir(scope)
            attached.append(fd)
            attr = ProgAttachAttr(
                target_fd=fd, attach_bpf_fd=prog, attach_type=EGRESS, attach_flags=BPF_F_ALLOW_MULTI
            )
            bpf(Cmd.PROG_ATTACH, attr, scope)
        total = sum(len(dirs) for _top, dirs, _files in os.walk(mount)) + 1
        pid = program_id(prog)
        others = {pid + 1 + i: "socket_filter" for i in range(args.programs)}
        print(
            f"{total} cgroups on the host ({len(scopes)} with the program attached), "
            f"{args.programs} programs of other types"
        )
        names = Names()
        source = ProgAttachSource()
        for label, types in (
            ("no cgroup program type", {}),
            ("cgroup_skb", {pid: "cgroup_skb"}),
            ("cgroup_skb + cgroup_device", {pid: "cgroup_skb", 1: "cgroup_device"}),
            (
                "cgroup_skb, _device, _sock, _sock_addr, _sockopt, sock_ops, _sysctl",
                {
                    pid: "cgroup_skb",
                    1: "cgroup_device",
                    2: "cgroup_sock",
                    3: "cgroup_sock_addr",
                    4: "cgroup_sockopt",
                    5: "sock_ops",
                    6: "cgroup_sysctl",
                },
            ),
        ):
            programs = {**others, **types}
            found = source.read(DiscoveryContext(names, programs))
            if "cgroup_skb" in types.values():
                assert len(found[pid]) == len(scopes), "every attachment is found"
            took = median_s(lambda p=programs: source.read(DiscoveryContext(names, p)), args.passes)
            print(
                f"  {label:<66} {took * 1e3:7.3f} ms, {source.queries:5} queries "
                f"({took / total * 1e6:.1f} µs a cgroup)"
            )
        # The whole discovery (links, then prog_attach, then perf_event) as the CLI runs it.
        discovery = AttachmentDiscovery(0.0, names=names)
        programs = {**others, pid: "cgroup_skb"}
        whole = median_s(lambda: discovery.get(programs), args.passes)
        print(f"  whole discovery (all sources), cgroup_skb loaded: {whole * 1e3:7.3f} ms")
        names.close()
    finally:
        for fd in attached:
            with contextlib.suppress(OSError):
                bpf(
                    Cmd.PROG_DETACH,
                    ProgAttachAttr(target_fd=fd, attach_bpf_fd=prog, attach_type=EGRESS),
                    "detach",
                )
            os.close(fd)
        os.close(prog)
        remove_tree(top)


if __name__ == "__main__":
    main()
