"""CPU and peak memory of the whole ``bpftop-otel`` process with 1,000 programs (as root).

    python benchmarks/bench_process.py [--programs 1000] [--seconds 60] [--settle 5]
                                       [--modes export,live,json,export-http,export60]
                                       [--paths syscall,iterator]

The script loads ``--programs`` tiny socket filters (released at the end), starts a local
``rotel-agent`` (OTLP gRPC, blackhole exporter), then runs ``bpftop-otel`` at a 1 s interval
in each mode and with each sampling path, one run at a time:

* ``export``: headless, OTLP to rotel every 10 s (``--export-interval 10``),
* ``export-http``: the same over OTLP/HTTP (``--protocol http/protobuf``: no gRPC library),
* ``export60``: gRPC at the default export interval, 60 s (one export in the window;
  give ``--seconds`` a multiple of 60),
* ``live``: ``--live`` in a tmux pane (160x50),
* ``json``: ``--json --exporter none``, stdout to /dev/null.

After ``--settle`` seconds (start-up is timed by ``bench_startup.py``) it reads utime+stime
from ``/proc/PID/stat`` for ``--seconds`` seconds, and prints the CPU as % of one core and
the peak resident size (``VmHWM`` from ``/proc/PID/status``, start-up included).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Sequence

from _bench import (
    Rotel,
    bpftop_otel,
    cli_env,
    cpu_seconds,
    load_average,
    loaded_filters,
    machine,
    tmux,
    vm_hwm_kib,
)


def measure(pid: int, settle: float, seconds: float) -> tuple[float, float]:
    """(% of one core over ``seconds`` after ``settle``, peak RSS in MB)."""
    time.sleep(settle)
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    return (c1 - c0) / (t1 - t0) * 100, vm_hwm_kib(pid) / 1024


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_headless(args: Sequence[str], settle: float, seconds: float) -> tuple[float, float]:
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen([*bpftop_otel(), *args], stdout=null, stderr=null, env=cli_env())
        try:
            return measure(proc.pid, settle, seconds)
        finally:
            stop(proc)


def run_live(args: Sequence[str], settle: float, seconds: float) -> tuple[float, float]:
    session = f"bench-live-{os.getpid()}"
    command = " ".join([*bpftop_otel(), *args])
    tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "50", f"exec {command}")
    try:
        pid = int(tmux("list-panes", "-t", session, "-F", "#{pane_pid}").split()[0])
        return measure(pid, settle, seconds)
    finally:
        tmux("send-keys", "-t", session, "q", check=False)
        time.sleep(1)
        tmux("kill-server", check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--settle", type=float, default=5)
    parser.add_argument("--modes", default="export,live,json")
    parser.add_argument("--paths", default="syscall,iterator")
    args = parser.parse_args()
    modes = args.modes.split(",")
    paths = args.paths.split(",")

    print(f"bpftop-otel process: {machine()}; {load_average()}")
    print(
        f"{args.programs} extra programs loaded, 1 s interval, CPU over {args.seconds:g} s "
        f"after {args.settle:g} s"
    )
    print(f"{'mode':>8} {'path':>9} | {'CPU % of one core':>17} | {'peak RSS MB':>11}")
    with loaded_filters(args.programs), Rotel() as rotel:
        for mode in modes:
            for path in paths:
                common = ["--interval", "1", "--sampling-path", path]
                if mode in ("export", "export60"):
                    flags = ["--exporter", "otlp", "--endpoint", rotel.url]
                    flags += ["--export-interval", "10" if mode == "export" else "60"]
                    cpu, rss = run_headless(common + flags, args.settle, args.seconds)
                elif mode == "export-http":
                    flags = ["--exporter", "otlp", "--protocol", "http/protobuf"]
                    flags += ["--endpoint", rotel.http_url, "--export-interval", "10"]
                    cpu, rss = run_headless(common + flags, args.settle, args.seconds)
                elif mode == "json":
                    flags = ["--json", "--exporter", "none"]
                    cpu, rss = run_headless(common + flags, args.settle, args.seconds)
                elif mode == "live":
                    cpu, rss = run_live(common + ["--live"], args.settle, args.seconds)
                else:
                    raise SystemExit(f"unknown mode {mode!r}")
                print(f"{mode:>8} {path:>9} | {cpu:>17.2f} | {rss:>11.1f}", flush=True)


if __name__ == "__main__":
    main()
