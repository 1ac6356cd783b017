"""What users pay for run-time stats: ns added per program run with stats on vs off (as root).

    python benchmarks/bench_stats_overhead.py [--repeat 200000] [--rounds 7]

Method: each demo program (``otel_bpf.demo.programs``: the socket filter, XDP, cgroup_skb and
the deliberately slow socket filter) is loaded here and run by the kernel itself with
``BPF_PROG_TEST_RUN`` on a 64-byte UDP frame, ``--repeat`` times per call.  The kernel times
the whole batch and returns the mean ns per run (``duration``), so no syscall or Python cost
is in the figure.  Stats on (``BPF_ENABLE_STATS`` held) and off alternate for ``--rounds``
rounds; the medians are printed with the difference, which is the cost of the two clock
reads and the per-CPU counter update that ``bpf_prog_run`` adds while stats are on.

Stats are global: if another process holds them on, "off" cannot be measured and the script
says so instead of printing a wrong difference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

from _bench import load_average, machine, test_run

from otel_bpf.demo.programs import PROGRAMS
from otel_bpf.kernel.loader import load_program
from otel_bpf.kernel.stats import stats_enabled, stats_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    print(f"stats overhead: {machine()}; {load_average()}")
    state = stats_state()
    if state.enabled:
        sys.exit(f"stats are already on ({state.describe()}): 'off' cannot be measured now")
    print(f"BPF_PROG_TEST_RUN, repeat {args.repeat}, median of {args.rounds} rounds, ns per run")
    print(f"{'program':>18} {'type':>12} | {'stats off':>9} {'stats on':>9} {'added':>7}")
    for prog in PROGRAMS:
        fd = load_program(
            prog.prog_type, prog.insns, prog.name, expected_attach_type=prog.expected_attach_type
        )
        try:
            repeat = args.repeat if "slow" not in prog.name else max(1, args.repeat // 100)
            off, on = [], []
            test_run(fd, repeat)  # warm-up
            for _ in range(args.rounds):
                off.append(test_run(fd, repeat))
                with stats_enabled():
                    on.append(test_run(fd, repeat))
            if stats_state().others or stats_state().sysctl:
                sys.exit("another holder switched stats on during the run: figures discarded")
            m_off, m_on = statistics.median(off), statistics.median(on)
            print(
                f"{prog.name:>18} {prog.prog_type.name.lower():>12} | "
                f"{m_off:>9.0f} {m_on:>9.0f} {m_on - m_off:>+7.0f}   "
                f"(off {min(off)}-{max(off)}, on {min(on)}-{max(on)})",
                flush=True,
            )
        finally:
            os.close(fd)


if __name__ == "__main__":
    main()
