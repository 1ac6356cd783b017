"""The live view's terminal stops taking output: ``tcflow(TCOOFF)`` from another process on
the pty, or a tmux server that stops reading the pane.  Sampling and the Prometheus endpoint
go on, SIGTERM and SIGINT end the process within 1 s, and once the output resumes the
terminal is restored (screen, cursor, settings) with the log lines after it."""

from __future__ import annotations

import os
import shutil
import signal
import termios
import time
from pathlib import Path

import pytest
from peers import cli_command, free_port, wait_for_port, wait_until
from process_probe import gone
from scraped import assert_demo_runs_grow, demo_runs
from tmux_pane import Pane

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stopped_output_stops_neither_sampling_nor_the_exit(
    tmp_path: Path, signum: signal.Signals
) -> None:
    port = free_port()
    pane = Pane(
        [*cli_command(), "--live", "--demo", "--interval", "0.5", "--exporter", "prometheus",
         "--prometheus-port", str(port)],
        tmp_path,
    )  # fmt: skip
    tty = -1
    took = None
    try:
        pane.wait_for("otel_demo_", 45)
        pid = pane.program_pid()
        assert wait_for_port(port, 20)
        assert wait_until(lambda: demo_runs(port) > 0, 20), "the demo programs never ran"
        tty = os.open(pane.tmux("display", "-p", "-t", "live", "#{pane_tty}").strip(), os.O_RDWR)
        termios.tcflow(tty, termios.TCOOFF)
        time.sleep(1.0)  # a frame write is waiting by now
        assert_demo_runs_grow(port, step=1.0)
        signalled = time.monotonic()
        os.kill(pid, signum)
        assert wait_until(lambda: gone(pid), 5, 0.02), "no exit within 5 s of the signal"
        took = time.monotonic() - signalled
        assert "__EXIT__" not in pane.capture()  # the output is still stopped
        termios.tcflow(tty, termios.TCOON)
        assert pane.exit_status(10) == 0
        text = pane.wait_for("stopped after", 10)  # the shutdown's log lines came too
        assert pane.flags() == "0 1"  # main screen, cursor shown
        lflag = termios.tcgetattr(tty)[3]
        assert lflag & termios.ICANON and lflag & termios.ECHO  # settings restored
        assert "Traceback" not in text
    finally:
        if tty >= 0:
            termios.tcflow(tty, termios.TCOON)
            os.close(tty)
        pane.kill()
    print(f"{signum.name} with the output stopped: exit after {took:.3f} s")
    assert took < 1.0, f"exit took {took:.2f} s after {signum.name} with the output stopped"


def test_a_pane_nobody_reads_stops_neither_sampling_nor_the_exit(tmp_path: Path) -> None:
    """The tmux server stopped: the pty's buffer fills up, mid-frame, and stays full."""
    port = free_port()
    pane = Pane(
        [*cli_command(), "--live", "--demo", "--interval", "0.1", "--exporter", "prometheus",
         "--prometheus-port", str(port)],
        tmp_path,
    )  # fmt: skip
    server = int(pane.tmux("display", "-p", "#{pid}").strip())
    took = None
    try:
        pane.wait_for("otel_demo_", 45)
        pid = pane.program_pid()
        assert wait_for_port(port, 20)
        assert wait_until(lambda: demo_runs(port) > 0, 20), "the demo programs never ran"
        os.kill(server, signal.SIGSTOP)  # no tmux command from here until SIGCONT
        time.sleep(2.0)  # ten frames a second: the pty buffer is full by now
        assert_demo_runs_grow(port, step=1.0)
        signalled = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        assert wait_until(lambda: gone(pid), 5, 0.02), "no exit within 5 s of the signal"
        took = time.monotonic() - signalled
        os.kill(server, signal.SIGCONT)
        assert pane.exit_status(10) == 0
        text = pane.wait_for("stopped after", 10)
        assert pane.flags() == "0 1"
        assert "Traceback" not in text
    finally:
        os.kill(server, signal.SIGCONT)
        pane.kill()
    print(f"SIGTERM with the pane not read: exit after {took:.3f} s")
    assert took < 1.0, f"exit took {took:.2f} s after SIGTERM with the pane not read"
