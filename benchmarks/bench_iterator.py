"""Iterator vs syscall sampling path, with the C syscall loop as the baseline (run as root).

    python benchmarks/bench_iterator.py [--sizes 100,1000,5000] [--passes 20]

For each size the script loads that many tiny socket filters (and releases them at the end),
then prints nanoseconds per program for one pass of:

* the iterator path: the read alone (ITER_CREATE + read to EOF + close), read + decode into
  tuples (``IteratorSource.read_raw``) and the full ``IteratorSource.read`` (records
  merged with the cached static fields), with idle programs (earlier records reused) and
  as if every program had run since the previous pass ("busy": a new record each),
* the syscall path (``otel_bpf.kernel.programs.read_all``, with and without fdinfo memlock),
* the C loop in ``benchmarks/c/prog_loop.c`` (GET_NEXT_ID, GET_FD_BY_ID, OBJ_GET_INFO_BY_FD,
  close), compiled here with gcc,

plus the owners pass (``iter/task_file``) against the /proc scan, and the start-up costs.
The full comparison with bpftool and the exporter process is ``bench_sampling.py``.
Stats are on (``BPF_ENABLE_STATS``) while measuring, as when the exporter runs.  Medians of
``--passes`` passes; other load on the machine shows up as noise.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from _bench import PASS_ALL, build_c, c_loop_ns, median_s

from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.iterator.owners import BTF_NAMES as OWNERS_BTF_NAMES
from otel_bpf.kernel.iterator.owners import OwnersIterator, OwnersLayout
from otel_bpf.kernel.iterator.progs import BTF_NAMES as PROG_BTF_NAMES
from otel_bpf.kernel.iterator.progs import ProgIterator, ProgIterLayout
from otel_bpf.kernel.iterator.source import IteratorSource
from otel_bpf.kernel.loader import load_program
from otel_bpf.kernel.open_source import open_source
from otel_bpf.kernel.owners import scan_owners
from otel_bpf.kernel.programs import read_all
from otel_bpf.kernel.record_builder import with_counters
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.kernel.stats import stats_enabled
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf


def make_records_stale(source: IteratorSource) -> None:
    """Before a "busy" pass (untimed): as if every program had run since the last pass.

    Reaches into the source's previous pass and gives every record a run count the kernel
    cannot report, so the timed pass makes a new record for every program (freeing the stale
    ones, as a real pass frees the records its snapshots no longer hold)."""
    last = source._last
    if last is not None:
        last.records = [
            with_counters(r, r.run_time_ns, -1, r.recursion_misses) for r in last.records
        ]


def startup(passes: int) -> None:
    def lookup() -> None:
        with VmlinuxBtf() as btf:
            btf.prefetch(PROG_BTF_NAMES + OWNERS_BTF_NAMES)
            ProgIterLayout.from_btf(btf)
            OwnersLayout.from_btf(btf)

    lookup_ms = median_s(lookup, passes) * 1e3
    with VmlinuxBtf() as btf:
        layout = ProgIterLayout.from_btf(btf)
        olayout = OwnersLayout.from_btf(btf)
    load_ms = median_s(lambda: ProgIterator(layout).close(), passes) * 1e3
    owners_ms = median_s(lambda: OwnersIterator(olayout).close(), passes) * 1e3
    print(f"start-up: vmlinux BTF look-ups {lookup_ms:.1f} ms (fresh open each time), ")
    print(f"          iter/bpf_prog maps+load+link ({layout.variant}) {load_ms:.2f} ms, ")
    print(f"          iter/task_file load+link+calibration {owners_ms:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--passes", type=int, default=20)
    parser.add_argument(
        "--probe-read",
        action="store_true",
        help="use the bpf_probe_read_kernel variant even where bpf_rdonly_cast exists",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, max(sizes) + 1024)), hard))

    with tempfile.TemporaryDirectory() as tmp, stats_enabled():
        exe = build_c(Path(tmp))
        startup(args.passes)
        print()
        header = (
            f"{'programs':>8} | {'it bytes':>8} {'iter raw':>9} {'iter full':>9} "
            f"{'full busy':>9} | "
            f"{'syscall':>8} {'+memlock':>8} | {'C loop':>7} | "
            f"{'bytes/C':>7} {'raw/C':>6} {'full/C':>6} {'busy/C':>6} | "
            f"{'owners it':>9} {'procfs':>8} {'ratio':>6} | {'auto':>7}"
        )
        variant = "probe_read" if args.probe_read else "rdonly_cast where available"
        print(f"ns per program, {variant} (owners and auto start-up in ms per pass)")
        print(header)
        print("-" * len(header))
        fds: list[int] = []
        try:
            for size in sizes:
                while len(fds) < size:
                    fds.append(load_program(ProgType.SOCKET_FILTER, PASS_ALL, "bench_filter"))
                passes = args.passes if size <= 1000 else max(3, args.passes // 4)
                t0 = time.perf_counter()
                source = open_source(
                    "auto",
                    SourceOptions(owners=True),
                    use_rdonly_cast=False if args.probe_read else None,
                )
                auto_ms = (time.perf_counter() - t0) * 1e3
                if not isinstance(source, IteratorSource):
                    sys.exit("iterator path unavailable (see the warning above)")
                with source:
                    n = len(source.read_raw())
                    with ProgIterator(source.layout) as bare:
                        raw_bytes = median_s(bare.read_raw, passes) / n * 1e9
                    raw = median_s(source.read_raw, passes) / n * 1e9
                    no_owners = SourceOptions(owners=False)
                    full = median_s(partial(source.read, no_owners), passes) / n * 1e9
                    busy_pass = partial(source.read, no_owners)
                    stale = partial(make_records_stale, source)
                    busy = median_s(busy_pass, passes, between=stale) / n * 1e9
                    sc = median_s(partial(read_all, SourceOptions(memlock=False)), passes) / n * 1e9
                    scm = median_s(read_all, passes) / n * 1e9
                    _, c_ns = c_loop_ns(exe, passes)
                    with VmlinuxBtf() as btf:
                        olayout = OwnersLayout.from_btf(btf)
                    with OwnersIterator(olayout) as owners_it:
                        own_ms = median_s(owners_it.owners, passes) * 1e3
                    proc_ms = median_s(scan_owners, max(3, passes // 2)) * 1e3
                print(
                    f"{n:>8} | {raw_bytes:>8.0f} {raw:>9.0f} {full:>9.0f} {busy:>9.0f} | "
                    f"{sc:>8.0f} {scm:>8.0f} | {c_ns:>7.0f} | "
                    f"{raw_bytes / c_ns:>7.3f} {raw / c_ns:>6.3f} {full / c_ns:>6.3f} "
                    f"{busy / c_ns:>6.3f} | "
                    f"{own_ms:>9.2f} {proc_ms:>8.2f} {proc_ms / own_ms:>5.0f}x | {auto_ms:>7.1f}"
                )
        finally:
            for fd in fds:
                os.close(fd)


if __name__ == "__main__":
    main()
