"""The iterator pass with per-CPU counters on and off (run as root).

    python benchmarks/bench_per_cpu.py [--programs 100,1000] [--passes 50]
        [--baseline REF|DIR] [--rounds 3]

Loads ``--programs`` tiny socket filters and prints the median nanoseconds per program of:
the kernel walk alone (``ProgIterator.read_raw``) of the default program and of the per-CPU
variant, and the full ``IteratorSource.read`` with idle programs (earlier records reused) and
"busy" (as if every program had run since the previous pass: a new record each).  Stats are
on while measuring.

With ``--baseline`` (a git commit of this repository or a checkout directory; default
``9b61343``, the last commit before per-CPU counters) the default pass (per-CPU off) is also
timed in the baseline's code and in this checkout's, each in a child process over the same
loaded programs, alternating for ``--rounds`` rounds: per-CPU counters must not make the
default pass slower.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from _bench import checkout, loaded_filters, median_s, span

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


BEFORE_PER_CPU = "9b613435467fd9d1ae5ffe800ed50cf64437721b"
"""The last commit before per-CPU counters."""

# The default pass, timed in a child process importing otel_bpf from its PYTHONPATH; only
# names that exist in both the baseline and this checkout.
DEFAULT_PASS = """
import json, statistics, sys, time
from otel_bpf.kernel.iterator.source import IteratorSource
from otel_bpf.kernel.record_builder import with_counters
from otel_bpf.kernel.source import SourceOptions
passes, n = int(sys.argv[1]), int(sys.argv[2])
def timed(source, stale):
    times = []
    for _ in range(passes):
        last = source._merger._last
        if stale and last is not None:
            last.records = [with_counters(r, r.run_time_ns, -1, r.recursion_misses)
                            for r in last.records]
        t = time.perf_counter()
        source.read()
        times.append(time.perf_counter() - t)
    return statistics.median(times) / n * 1e9
with IteratorSource(SourceOptions(memlock=False)) as source:
    source.read()
    print(json.dumps([timed(source, False), timed(source, True)]))
"""


def default_pass_ns(code: Path, passes: int, programs: int) -> tuple[float, float]:
    """(idle, busy) ns per program of the default pass in ``code``'s otel_bpf."""
    env = dict(os.environ, PYTHONPATH=str(code))
    out = subprocess.run(
        [sys.executable, "-c", DEFAULT_PASS, str(passes), str(programs)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    idle, busy = json.loads(out)
    return idle, busy


def compare_default_pass(baseline: Path, rounds: int, passes: int, programs: int) -> None:
    here = Path(__file__).resolve().parent.parent
    figures: dict[str, list[tuple[float, float]]] = {"baseline": [], "this": []}
    for _ in range(rounds):
        for label, code in (("baseline", baseline), ("this", here)):
            figures[label].append(default_pass_ns(code, passes, programs))
    for label, runs in figures.items():
        idle = span([r[0] for r in runs], 0)
        busy = span([r[1] for r in runs], 0)
        print(f"default pass, {label:8}: read idle {idle:>9} ns, busy {busy:>9} ns")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", default="100", help="comma-separated counts")
    parser.add_argument("--passes", type=int, default=50)
    parser.add_argument(
        "--baseline",
        nargs="?",
        const=BEFORE_PER_CPU,
        help=f"checkout directory or git commit (alone: {BEFORE_PER_CPU[:7]})",
    )
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with VmlinuxBtf() as btf:
        layout = ProgIterLayout.from_btf(btf)
    for count in (int(c) for c in args.programs.split(",")):
        print(f"{count} programs, {len(possible_cpus())} possible CPUs, {layout.variant}")
        measure(layout, count, args)


def measure(layout: ProgIterLayout, programs: int, args: argparse.Namespace) -> None:
    with stats_enabled(), loaded_filters(programs) as fds:
        n = len(fds)
        if args.baseline:
            repo = Path(__file__).resolve().parent.parent
            with checkout(args.baseline, repo) as baseline:
                compare_default_pass(baseline, args.rounds, args.passes, n)
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
