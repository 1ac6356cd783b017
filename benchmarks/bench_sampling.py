"""Sampling pass cost per program, both paths, beside the C syscall loop and bpftool (as root).

    python benchmarks/bench_sampling.py [--sizes 100,1000,5000] [--passes 20]

For each size the script loads that many tiny socket filters (released at the end) and
prints nanoseconds per program for one full pass (records built, no owners) of:

* ``syscall``: ``SyscallSource.read()`` as the sampler calls it (memlock on),
* ``iter idle``: ``IteratorSource.read()`` (what ``open_source("auto")`` gives) when no
  program ran since the previous pass (earlier records are reused),
* ``iter busy``: the same when EVERY program ran once since the previous pass (each one is
  run with BPF_PROG_TEST_RUN between the timed passes, untimed): a new record per program,
* ``C loop``: ``benchmarks/c/prog_loop.c`` (GET_NEXT_ID, GET_FD_BY_ID, OBJ_GET_INFO_BY_FD,
  close per program), compiled here with gcc: the floor for the syscall method,
* ``C busy``: the same C loop when every program ran once before each timed pass (the C
  program runs them itself, untimed): the kernel then sums per-CPU counters the CPUs just
  wrote, which costs every method more; ``busy/C`` compares ``iter busy`` with it,
* ``bpftool``: ``bpftool prog show -j`` to /dev/null, a whole process per pass,

then the ratios to the C loop, and owner lookup separately (``iter/task_file`` against the
``/proc/*/fd`` scan), in ms per pass and per 1,000 fds open on the host.  Stats are on while
measuring, as when the exporter runs.  Medians of ``--passes`` passes (fewer at 5,000).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

from _bench import (
    build_c,
    c_loop_ns,
    grow,
    load_average,
    machine,
    median_s,
    raise_nofile,
    test_run,
)

from otel_bpf.kernel.iterator.owners import OwnersIterator, OwnersLayout
from otel_bpf.kernel.open_source import open_source
from otel_bpf.kernel.owners import scan_owners
from otel_bpf.kernel.programs import SyscallSource
from otel_bpf.kernel.stats import stats_enabled
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf


def host_fds() -> int:
    """File descriptors open in all processes on the host (what a /proc scan walks)."""
    total = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):  # gone, or no permission
                total += len(os.listdir(f"/proc/{entry.name}/fd"))
    return total


def bpftool_pass() -> None:
    subprocess.run(
        ["bpftool", "prog", "show", "-j"], stdout=subprocess.DEVNULL, check=True, timeout=120
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--passes", type=int, default=20)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    raise_nofile(max(sizes))
    has_bpftool = shutil.which("bpftool") is not None

    print(f"sampling pass: {machine()}; {load_average()}")
    print("ns per program per pass (owners: ms per pass, and ms per 1,000 host fds)")
    header = (
        f"{'programs':>8} | {'syscall':>7} {'it idle':>7} {'it busy':>7} {'C loop':>7} "
        f"{'C busy':>7} {'bpftool':>7} | {'sys/C':>5} {'idle/C':>6} {'busy/C':>6} {'tool/C':>6} | "
        f"{'fds':>6} {'own it':>7} {'procfs':>7} {'it/1kfd':>7} {'pr/1kfd':>7} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    fds: list[int] = []
    with tempfile.TemporaryDirectory() as tmp, stats_enabled():
        exe = build_c(Path(tmp))
        try:
            for size in sizes:
                grow(fds, size)
                passes = args.passes if size <= 1000 else max(3, args.passes // 4)
                source = open_source("auto")
                if source.path != "iterator":
                    sys.exit("iterator path unavailable (see the warning above)")
                with source:
                    n = len(source.read().records)
                    reader = SyscallSource()
                    syscall = median_s(reader.read, passes) / n * 1e9
                    idle = median_s(source.read, passes) / n * 1e9
                    run_all = partial(_run_each, fds)
                    busy = median_s(source.read, passes, run_all)
                    busy = busy / n * 1e9
                    _, c_ns = c_loop_ns(exe, passes)
                    _, c_busy_ns = c_loop_ns(exe, passes, run=True)
                    tool = (
                        median_s(bpftool_pass, max(3, passes // 4)) / n * 1e9
                        if has_bpftool
                        else float("nan")
                    )
                    with VmlinuxBtf() as btf:
                        olayout = OwnersLayout.from_btf(btf)
                    with OwnersIterator(olayout) as owners_it:
                        own_ms = median_s(owners_it.owners, passes) * 1e3
                    proc_ms = median_s(scan_owners, max(3, passes // 2)) * 1e3
                    nfd = host_fds()
                print(
                    f"{n:>8} | {syscall:>7.0f} {idle:>7.0f} {busy:>7.0f} {c_ns:>7.0f} "
                    f"{c_busy_ns:>7.0f} {tool:>7.0f} | {syscall / c_ns:>5.2f} "
                    f"{idle / c_ns:>6.3f} {busy / c_busy_ns:>6.3f} {tool / c_ns:>6.2f} | "
                    f"{nfd:>6} {own_ms:>7.2f} {proc_ms:>7.2f} {own_ms / nfd * 1e3:>7.3f} "
                    f"{proc_ms / nfd * 1e3:>7.2f} {proc_ms / own_ms:>5.0f}x",
                    flush=True,
                )
        finally:
            for fd in fds:
                os.close(fd)


def _run_each(fds: list[int]) -> None:
    for fd in fds:
        test_run(fd)


if __name__ == "__main__":
    main()
