"""What naming each owner's cgroup, container and pod adds to an owners pass (run as root).

    python benchmarks/bench_owner_workload.py [--owners 100] [--passes 50]

Loads one socket filter, forks ``--owners`` processes that inherit its fd (so each is an
owner), and prints the median milliseconds of an owners pass on both paths (the ``/proc``
scan and the ``iter/task_file`` walk, each grouping reused across passes as in a run), with
``/proc/<pid>/cgroup`` read for every owner and with that read replaced by "unknown" (the
pass as it was before), then the read and the parse of one file alone.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

from _bench import PASS_ALL, load_average, machine, median_s

from otel_bpf import workload
from otel_bpf.kernel import owners
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.iterator.owners import OwnersIterator, OwnersLayout
from otel_bpf.kernel.loader import load_program
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf
from otel_bpf.records import UNKNOWN_WORKLOAD

K8S_FILE = (
    "0::/kubepods.slice/kubepods-burstable.slice/"
    "kubepods-burstable-pod26988ab4_5b95_45c2_bf6d_29387c585ff9.slice/"
    "cri-containerd-05c45fae4a1941581616a248d2611ade321b80a34b2d558edfb7adec56efe055.scope\n"
)


@contextlib.contextmanager
def forked_owners(count: int) -> Iterator[list[int]]:
    """``count`` children holding the program fd this process holds, until the pipe closes."""
    r, w = os.pipe()
    pids = []
    try:
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                os.close(w)
                os.read(r, 1)
                os._exit(0)
            pids.append(pid)
        yield pids
    finally:
        os.close(w)
        os.close(r)
        for pid in pids:
            os.waitpid(pid, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--owners", type=int, default=100)
    parser.add_argument("--passes", type=int, default=50)
    args = parser.parse_args()
    print(machine())
    fd = load_program(ProgType.SOCKET_FILTER, PASS_ALL, "bench_owned")
    with VmlinuxBtf() as btf:
        layout = OwnersLayout.from_btf(btf)
    with forked_owners(args.owners) as pids, OwnersIterator(layout) as it:
        real = owners.process_workload
        cache: dict[owners.OwnerKey, owners.Owner] = {}

        def procfs_pass() -> None:
            nonlocal cache
            cache = owners.group_by_program(owners.scan_fds(), cache)[1]

        print(f"{args.owners} owner processes; {load_average()}")
        for label, fake in (("before (no cgroup read)", True), ("with the cgroup read", False)):
            owners.process_workload = (lambda pid: UNKNOWN_WORKLOAD) if fake else real  # type: ignore[assignment]
            cache = {}
            procfs = median_s(procfs_pass, args.passes) * 1e3
            walk = median_s(it.owners, args.passes) * 1e3
            print(f"  {label:24}  /proc scan {procfs:7.2f} ms   iterator {walk:6.2f} ms")
        owners.process_workload = real  # type: ignore[assignment]
        read = median_s(lambda: [owners.read_cgroup(p) for p in pids], args.passes)
        print(f"  read /proc/<pid>/cgroup: {read / len(pids) * 1e6:.1f} us per process")
    parse = median_s(lambda: workload.parse_proc_cgroup.__wrapped__(K8S_FILE), 1000)
    print(f"  parse a Kubernetes pod container's file (uncached): {parse * 1e6:.1f} us")
    os.close(fd)


if __name__ == "__main__":
    main()
