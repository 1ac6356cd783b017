"""The live view under stress (as root, with tmux): a terminal that takes no output, a
SIGWINCH storm, a 20,000-key paste.

    python benchmarks/bench_live_stress.py [--runs 3] [--programs 2000]

Each run starts ``bpftop-otel --live`` in a pane of the benchmarks' own tmux server:

* stopped output: with ``--demo --exporter prometheus``, the pane's output stopped with
  ``tcflow(TCOOFF)`` on its tty, then SIGTERM: seconds until the process is gone (capped at
  10 s), whether the scraped ``bpf_program_runs`` moved while stopped, and whether the pane
  was restored (main screen, cursor shown) after ``TCOON``;
* SIGWINCH storm: 5,000 SIGWINCH in a tight loop, then SIGTERM: ``Exception ignored``
  reports on stderr, seconds to exit (capped at 5 s);
* paste: ``--programs`` idle socket filters loaded, the view filtered to them, 19,999 ``j``
  and one ``?`` pasted (``load-buffer`` + ``paste-buffer``): seconds until the help screen
  shows, that is until every key was handled (capped at 60 s), and how long neither the
  table nor the help was on the screen meanwhile.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import tempfile
import termios
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from _bench import (
    bpftop_otel,
    free_port,
    live_frame_shown,
    load_average,
    loaded_filters,
    machine,
    tmux,
    wait_port,
)


def until(predicate: Callable[[], object], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" in f.read()
    except FileNotFoundError:
        return True


def capture() -> str:
    return tmux("capture-pane", "-p", "-t", "stress", check=False)


def start(args: list[str], stderr: Path | None = None) -> int:
    """The pane's command started; returns its pid once the first frame shows."""
    command = " ".join([*bpftop_otel(), "--live", *args])
    if stderr is not None:
        command += f" 2>{stderr}"
    tmux("new-session", "-d", "-s", "stress", "-x", "120", "-y", "40",
         f"{command}; sleep 60")  # fmt: skip
    if not until(lambda: live_frame_shown(capture()), 45):
        raise RuntimeError(f"no live-view frame within 45 s:\n{capture()}")
    shell = int(tmux("display", "-p", "-t", "stress", "#{pane_pid}").strip())
    kids = Path(f"/proc/{shell}/task/{shell}/children").read_text().split()
    return int(kids[0])


def stop() -> None:
    tmux("kill-server", check=False)
    time.sleep(0.3)


def demo_runs(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read(8 << 20).decode()
    return sum(
        float(v) for v in re.findall(r"^bpf_program_runs\S*otel_demo_\S*\} (\S+)$", text, re.M)
    )


def stopped_output() -> tuple[float, bool, bool]:
    """(seconds to exit after SIGTERM, counters moved while stopped, restored after TCOON)."""
    port = free_port()
    pid = start(["--demo", "--interval", "0.5", "--exporter", "prometheus",
                 "--prometheus-port", str(port)])  # fmt: skip
    tty = os.open(tmux("display", "-p", "-t", "stress", "#{pane_tty}").strip(), os.O_RDWR)
    try:
        if not wait_port(port, 20) or not until(lambda: demo_runs(port) > 0, 20, 0.2):
            raise RuntimeError("no demo counters on the Prometheus endpoint")
        termios.tcflow(tty, termios.TCOOFF)
        time.sleep(1.0)
        before = demo_runs(port)
        time.sleep(2.0)
        moved = demo_runs(port) > before
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        until(lambda: gone(pid), 10)
        took = time.monotonic() - t0
        termios.tcflow(tty, termios.TCOON)
        until(lambda: gone(pid), 20)
        restored = until(
            lambda: (
                tmux("display", "-p", "-t", "stress", "#{alternate_on} #{cursor_flag}").strip()
                == "0 1"
            ),
            10,
        )
        return took, moved, restored
    finally:
        termios.tcflow(tty, termios.TCOON)
        os.close(tty)
        stop()


def sigwinch_storm(tmp: Path) -> tuple[int, float]:
    """(``Exception ignored`` reports on stderr, seconds to exit after SIGTERM)."""
    err = tmp / "storm.stderr"
    pid = start(["--interval", "0.5"], stderr=err)
    try:
        tmux("resize-window", "-t", "stress", "-x", "90", "-y", "30")
        for _ in range(5000):
            os.kill(pid, signal.SIGWINCH)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        until(lambda: gone(pid), 5)
        took = time.monotonic() - t0
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
        return err.read_text(errors="replace").count("Exception ignored"), took
    finally:
        stop()


def paste(tmp: Path, programs: int, keys: int = 20_000) -> tuple[float, float]:
    """(seconds until the whole paste was handled, seconds nothing was on the screen)."""
    start(["--interval", "1"])
    try:
        tmux("send-keys", "-t", "stress", "f")
        tmux("send-keys", "-t", "stress", "-l", "bench_paste")
        tmux("send-keys", "-t", "stress", "Enter")
        if not until(lambda: f"of {programs})" in capture(), 10):
            raise RuntimeError(f"the filter did not apply:\n{capture()}")
        buffer = tmp / "paste"
        buffer.write_text("j" * (keys - 1) + "?")
        tmux("load-buffer", str(buffer))
        t0 = time.monotonic()
        tmux("paste-buffer", "-t", "stress")
        off = 0.0
        previous = t0
        while time.monotonic() - t0 < 60:
            text = capture()
            now = time.monotonic()
            if "live view: keys" in text:
                return now - t0, off
            if not live_frame_shown(text):
                off += now - previous
            previous = now
            time.sleep(0.01)
        return float("inf"), off
    finally:
        stop()


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--programs", type=int, default=2000)
    args = parser.parse_args()
    print(f"live view under stress: {machine()}; {load_average()}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runs = [stopped_output() for _ in range(args.runs)]
        print(f"output stopped, SIGTERM to exit: {summary([r[0] for r in runs])}; "
              f"counters moved {sum(r[1] for r in runs)}/{args.runs}; "
              f"restored after TCOON {sum(r[2] for r in runs)}/{args.runs}")  # fmt: skip
        storms = [sigwinch_storm(tmp) for _ in range(args.runs)]
        print(f"5,000 SIGWINCH: 'Exception ignored' on stderr {[s[0] for s in storms]}; "
              f"SIGTERM right after, to exit: {summary([s[1] for s in storms])}")  # fmt: skip
        with loaded_filters(args.programs, "bench_paste"):
            pastes = [paste(tmp, args.programs) for _ in range(args.runs)]
        print(f"20,000 keys pasted over {args.programs} programs: handled after "
              f"{summary([p[0] for p in pastes])}; table off the screen "
              f"{summary([p[1] for p in pastes])}")  # fmt: skip


if __name__ == "__main__":
    main()
