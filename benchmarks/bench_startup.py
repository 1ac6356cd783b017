"""Start-up: time from launching ``bpftop-otel`` to the first live-view frame and to the
first export received by a collector (as root).

    python benchmarks/bench_startup.py [--programs 1000] [--runs 3] [--paths syscall,iterator,auto]

With ``--programs`` tiny socket filters loaded (released at the end):

* live view: ``bpftop-otel --live`` is started in a tmux pane of its own tmux server, and
  the pane is polled every 10 ms until the frame shows (title, table header, row count);
  tmux's own start is inside the figure,
* export: ``bpftop-otel --export-interval 1`` against a local ``rotel-agent``; the figure
  ends when rotel logs the first batch.  The SDK exports one interval after start, so the
  figure minus 1 s is the start-up cost.

Prints the median and the range of ``--runs`` runs, per sampling path.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

from _bench import (
    Rotel,
    bpftop_otel,
    cli_env,
    live_frame_shown,
    load_average,
    loaded_filters,
    machine,
    tmux,
)


def until(predicate, timeout: float, interval: float = 0.01) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def first_frame_s(path: str) -> float:
    command = " ".join([*bpftop_otel(), "--live", "--sampling-path", path])
    t0 = time.monotonic()
    tmux("new-session", "-d", "-s", "startup", "-x", "160", "-y", "50", f"exec {command}")
    try:
        shown = until(lambda: live_frame_shown(tmux("capture-pane", "-p", "-t", "startup")), 30)
        elapsed = time.monotonic() - t0
        if not shown:
            raise RuntimeError("no live-view frame within 30 s")
        return elapsed
    finally:
        tmux("send-keys", "-t", "startup", "q", check=False)
        time.sleep(0.5)
        tmux("kill-server", check=False)


def first_export_s(path: str) -> float:
    with Rotel() as rotel:
        args = ["--sampling-path", path, "--endpoint", rotel.url, "--export-interval", "1"]
        t0 = time.monotonic()
        with open(os.devnull, "wb") as null:
            proc = subprocess.Popen(
                [*bpftop_otel(), *args], stdout=null, stderr=null, env=cli_env()
            )
        try:
            if not until(rotel.received, 30):
                raise RuntimeError("rotel received nothing within 30 s")
            return time.monotonic() - t0
        finally:
            proc.terminate()
            proc.wait(20)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--paths", default="syscall,iterator,auto")
    args = parser.parse_args()
    print(f"start-up: {machine()}; {load_average()}")
    print(f"{args.programs} extra programs loaded; median (range) of {args.runs} runs")
    print(f"{'path':>9} | {'first live frame':>22} | {'first export (1 s interval)':>27}")
    with loaded_filters(args.programs):
        for path in args.paths.split(","):
            frames = [first_frame_s(path) for _ in range(args.runs)]
            exports = [first_export_s(path) for _ in range(args.runs)]
            print(f"{path:>9} | {summary(frames):>22} | {summary(exports):>27}", flush=True)


if __name__ == "__main__":
    main()
