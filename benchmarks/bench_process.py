"""CPU and peak memory of the whole ``bpftop-otel`` process with 1,000 programs (as root).

    python benchmarks/bench_process.py [--programs 1000] [--seconds 60] [--settle 5]
                                       [--modes export,live,json,export-http,export60]
                                       [--paths syscall,iterator] [--busy] [--gc]
                                       [--code DIR]

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

``--busy`` runs every loaded program once a second (``BPF_PROG_TEST_RUN`` from a thread of
this script), so each pass has a new reading and new figures for all of them; without it the
programs stay idle.  ``--gc`` runs ``bpftop-otel`` through ``_gc_count.py`` and adds the full
garbage collections in the window (count, total and longest ms).  ``--code DIR`` runs the
``otel_bpf`` package of another checkout (a ``git worktree`` of an earlier commit) with this
venv, to compare two commits in one session.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from _bench import (
    Rotel,
    bpftop_otel,
    cli_env,
    cpu_seconds,
    load_average,
    loaded_filters,
    machine,
    test_run,
    tmux,
    vm_hwm_kib,
)

GC_LOG = Path(tempfile.gettempdir()) / f"bench-process-gc-{os.getpid()}"
settings: dict[str, object] = {"gc": False, "code": None}


def command(args: Sequence[str]) -> list[str]:
    """``bpftop-otel args``, through the collection counter with ``--gc``."""
    if settings["gc"]:
        wrapper = Path(__file__).resolve().parent / "_gc_count.py"
        return [sys.executable, str(wrapper), str(GC_LOG), *args]
    return [*bpftop_otel(), *args]


def env() -> dict[str, str]:
    out = cli_env()
    if settings["code"]:
        out["PYTHONPATH"] = str(settings["code"])
    return out


def full_collections() -> tuple[int, float, float]:
    """(count, total ms, longest ms) so far, from ``_gc_count.py``; zeros without ``--gc``."""
    try:
        count, total, longest = GC_LOG.read_text().split()
    except (OSError, ValueError):
        return 0, 0.0, 0.0
    return int(count), float(total), float(longest)


@contextlib.contextmanager
def busy(fds: list[int], on: bool) -> Iterator[None]:
    """With ``on``, every program in ``fds`` runs once a second until the block ends."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            start = time.monotonic()
            for fd in fds:
                test_run(fd)
            stop.wait(max(0.0, 1.0 - (time.monotonic() - start)))

    thread = threading.Thread(target=loop, daemon=True)
    if on:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if on:
            thread.join()


Result = tuple[float, float, str]


def measure(pid: int, settle: float, seconds: float) -> Result:
    """(% of one core over ``seconds`` after ``settle``, peak RSS in MB, full collections
    in the window)."""
    time.sleep(settle)
    g0 = full_collections()
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    g1 = full_collections()
    gcs = f"{g1[0] - g0[0]} ({g1[1] - g0[1]:.0f} ms, max {g1[2]:.0f})" if settings["gc"] else "-"
    return (c1 - c0) / (t1 - t0) * 100, vm_hwm_kib(pid) / 1024, gcs


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_headless(args: Sequence[str], settle: float, seconds: float) -> Result:
    with open(os.devnull, "wb") as null:
        proc = subprocess.Popen(command(args), stdout=null, stderr=null, env=env())
        try:
            return measure(proc.pid, settle, seconds)
        finally:
            stop(proc)


def run_live(args: Sequence[str], settle: float, seconds: float) -> Result:
    session = f"bench-live-{os.getpid()}"
    line = " ".join(command(args))
    code = settings["code"]
    if code:
        line = f"PYTHONPATH={code} {line}"
    tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "50", f"exec env {line}")
    try:
        pid = int(tmux("list-panes", "-t", session, "-F", "#{pane_pid}").split()[0])
        return measure(pid, settle, seconds)
    finally:
        tmux("send-keys", "-t", session, "q", check=False)
        time.sleep(1)
        tmux("kill-server", check=False)


def otlp_grpc_flags(rotel: Rotel, export_interval: int) -> list[str]:
    """Headless export to ``rotel`` over OTLP/gRPC every ``export_interval`` seconds."""
    return [
        "--exporter",
        "otlp",
        "--endpoint",
        rotel.url,
        "--export-interval",
        str(export_interval),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--settle", type=float, default=5)
    parser.add_argument("--modes", default="export,live,json")
    parser.add_argument("--paths", default="syscall,iterator")
    parser.add_argument("--busy", action="store_true", help="run every program once a second")
    parser.add_argument("--gc", action="store_true", help="count full garbage collections")
    parser.add_argument("--code", type=Path, help="otel_bpf checkout to run instead of this one")
    args = parser.parse_args()
    settings["gc"] = args.gc
    settings["code"] = args.code.resolve() if args.code else None
    modes = args.modes.split(",")
    paths = args.paths.split(",")

    print(f"bpftop-otel process: {machine()}; {load_average()}")
    print(
        f"{args.programs} extra programs loaded{', all running every second' if args.busy else ''}"
        f", 1 s interval, CPU over {args.seconds:g} s after {args.settle:g} s"
        + (f"; code from {settings['code']}" if settings["code"] else "")
    )
    print(
        f"{'mode':>8} {'path':>9} | {'CPU % of one core':>17} | {'peak RSS MB':>11}"
        " | full collections"
    )
    with loaded_filters(args.programs) as fds, busy(fds, args.busy), Rotel() as rotel:
        for mode in modes:
            for path in paths:
                common = ["--interval", "1", "--sampling-path", path]
                if mode in ("export", "export60"):
                    flags = otlp_grpc_flags(rotel, 10 if mode == "export" else 60)
                    cpu, rss, gcs = run_headless(common + flags, args.settle, args.seconds)
                elif mode == "export-http":
                    flags = ["--exporter", "otlp", "--protocol", "http/protobuf"]
                    flags += ["--endpoint", rotel.http_url, "--export-interval", "10"]
                    cpu, rss, gcs = run_headless(common + flags, args.settle, args.seconds)
                elif mode == "json":
                    flags = ["--json", "--exporter", "none"]
                    cpu, rss, gcs = run_headless(common + flags, args.settle, args.seconds)
                elif mode == "live":
                    cpu, rss, gcs = run_live(common + ["--live"], args.settle, args.seconds)
                else:
                    raise SystemExit(f"unknown mode {mode!r}")
                print(f"{mode:>8} {path:>9} | {cpu:>17.2f} | {rss:>11.1f} | {gcs}", flush=True)


if __name__ == "__main__":
    main()
