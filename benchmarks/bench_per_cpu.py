"""The iterator pass with per-CPU counters on and off (run as root).

    python benchmarks/bench_per_cpu.py [--programs 100] [--passes 50]

Loads ``--programs`` tiny socket filters and prints the median nanoseconds per program of:
the kernel walk alone (``ProgIterator.read_raw``) of the default program and of the per-CPU
variant, and the full ``IteratorSource.read`` with idle programs (earlier records reused) and
"busy" (as if every program had run since the previous pass: a new record each).  Stats are
on while measuring.
"""

from __future__ import annotations

import argparse

from _bench import loaded_filters, median_s

from otel_bpf.kernel.iterator.progs import ProgIterator, ProgIterLayout
from otel_bpf.kernel.iterator.source import IteratorSource
from otel_bpf.kernel.record_builder import with_counters
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.kernel.stats import stats_enabled
from otel_bpf.kernel.system import possible_cpus
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf


def make_records_stale(source: IteratorSource) -> None:
    """As if every program had run since the last pass (untimed, before a "busy" pass)."""
    last = source._merger._last
    if last is not None:
        last.records = [
            with_counters(r, r.run_time_ns, -1, r.recursion_misses) for r in last.records
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=100)
    parser.add_argument("--passes", type=int, default=50)
    args = parser.parse_args()
    with VmlinuxBtf() as btf:
        layout = ProgIterLayout.from_btf(btf)
    print(f"{args.programs} programs, {len(possible_cpus())} possible CPUs, {layout.variant}")
    with stats_enabled(), loaded_filters(args.programs) as fds:
        n = len(fds)
        for per_cpu in (False, True):
            with ProgIterator(layout, per_cpu=per_cpu) as it:
                walk = median_s(it.read_raw, args.passes) / n * 1e9
            options = SourceOptions(memlock=False, per_cpu=per_cpu)
            with IteratorSource(options) as source:
                idle = median_s(source.read, args.passes) / n * 1e9
                busy = (
                    median_s(source.read, args.passes, lambda s=source: make_records_stale(s))
                    / n
                    * 1e9
                )
            label = "per-CPU on " if per_cpu else "per-CPU off"
            print(f"{label}: walk {walk:6.0f} ns, read idle {idle:6.0f} ns, busy {busy:6.0f} ns")


if __name__ == "__main__":
    main()
