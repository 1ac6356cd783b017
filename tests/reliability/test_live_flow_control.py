"""Ctrl-S and the live view: pressed in the view, or before it starts (the terminal then
stops output while the start-up log lines are written).  Either way the view keeps drawing,
SIGTERM/SIGINT end it within 1 s, and a hangup ends the process."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from peers import cli_command, wait_until
from process_probe import gone
from tmux_pane import Pane

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

LIVE_DEMO = [*cli_command(), "--live", "--demo", "--interval", "0.5"]


def view_is_drawing(pane: Pane) -> None:
    """The view is up (alternate screen, hidden cursor) and its frames keep changing."""
    assert wait_until(lambda: pane.flags() == "1 0", 45, 0.1), f"no view:\n{pane.capture()}"
    assert wait_until(lambda: "otel_demo_" in pane.capture(), 20, 0.1), pane.capture()
    before = pane.capture()
    assert wait_until(lambda: pane.capture() != before, 5, 0.1), f"the view froze; pane:\n{before}"


def end_within_a_second(pane: Pane, pid: int, signum: signal.Signals) -> float:
    signalled = time.monotonic()
    os.kill(pid, signum)
    assert wait_until(lambda: gone(pid), 5, 0.02), f"no exit within 5 s:\n{pane.capture()}"
    took = time.monotonic() - signalled
    assert pane.exit_status(10) == 0, pane.capture()
    assert pane.flags() == "0 1"
    return took


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_ctrl_s_neither_freezes_the_view_nor_blocks_signals(
    tmp_path: Path, signum: signal.Signals
) -> None:
    pane = Pane(LIVE_DEMO, tmp_path)
    try:
        # Ctrl-S once the view is up: the start-up log lines also name the demo programs,
        # so wait for the view itself (alternate screen on), not for a program name.
        assert wait_until(lambda: pane.flags() == "1 0", 45, 0.1), pane.capture()
        pid = pane.program_pid()
        pane.tmux("send-keys", "-t", "live", "C-s")
        time.sleep(1.5)
        view_is_drawing(pane)
        took = end_within_a_second(pane, pid, signum)
    finally:
        pane.kill()
    assert took < 1.0, f"exit took {took:.2f} s after {signum.name} with Ctrl-S pressed"


def test_ctrl_s_before_the_view_starts_stops_neither_start_up_nor_signals(
    tmp_path: Path,
) -> None:
    pane = Pane(LIVE_DEMO, tmp_path)
    try:
        # At once: the pane's terminal still has flow control on, so this stops its output
        # before the first start-up log line is written.
        pane.tmux("send-keys", "-t", "live", "C-s")
        pid = pane.program_pid()
        view_is_drawing(pane)
        took = end_within_a_second(pane, pid, signal.SIGTERM)
    finally:
        pane.kill()
    assert took < 1.0, f"exit took {took:.2f} s after SIGTERM"


def test_a_hangup_while_the_terminal_is_stopped_ends_the_process(tmp_path: Path) -> None:
    pane = Pane(LIVE_DEMO, tmp_path)
    try:
        pane.tmux("send-keys", "-t", "live", "C-s")
        pid = pane.program_pid()
        time.sleep(1.0)  # start-up under way, its log lines held by the stopped terminal
    finally:
        pane.kill()  # the terminal hangs up: SIGHUP, then writes fail with EIO
    assert wait_until(lambda: gone(pid), 10, 0.05), "the process outlived its terminal"
