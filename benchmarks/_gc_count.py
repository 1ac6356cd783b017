"""Run ``bpftop-otel`` with its full garbage collections counted (for ``bench_process.py``).

    python benchmarks/_gc_count.py OUT_FILE [bpftop-otel arguments]

After every collection of the oldest generation, ``OUT_FILE`` is rewritten with three
numbers: full collections so far, their total and their longest duration in ms.  The
benchmark reads it at the start and the end of its window.
"""

from __future__ import annotations

import gc
import os
import runpy
import sys
import time

out = sys.argv[1]
count = 0
total = 0.0
longest = 0.0
started = 0.0


def note(phase: str, info: dict[str, int]) -> None:
    global count, total, longest, started
    if info.get("generation") != 2:
        return
    if phase == "start":
        started = time.perf_counter()
        return
    took = (time.perf_counter() - started) * 1000
    count += 1
    total += took
    longest = max(longest, took)
    tmp = f"{out}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{count} {total:.1f} {longest:.1f}\n")
    os.replace(tmp, out)


with open(out, "w") as f:
    f.write("0 0 0\n")
gc.callbacks.append(note)
sys.argv = ["bpftop-otel", *sys.argv[2:]]
runpy.run_module("otel_bpf.cli.main", run_name="__main__", alter_sys=True)
