"""Ctrl-S in the live view: the view keeps drawing, and SIGTERM/SIGINT end it within 1 s."""

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


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_ctrl_s_neither_freezes_the_view_nor_blocks_signals(
    tmp_path: Path, signum: signal.Signals
) -> None:
    pane = Pane([*cli_command(), "--live", "--demo", "--interval", "0.5"], tmp_path)
    try:
        pane.wait_for("otel_demo_", 45)
        pid = pane.program_pid()
        pane.tmux("send-keys", "-t", "live", "C-s")
        time.sleep(1.5)
        before = pane.capture()
        assert wait_until(lambda: pane.capture() != before, 5, 0.1), "the view froze on Ctrl-S"
        signalled = time.monotonic()
        os.kill(pid, signum)
        assert wait_until(lambda: gone(pid), 5, 0.02), "no exit within 5 s"
        took = time.monotonic() - signalled
        assert pane.exit_status(10) == 0
        assert pane.flags() == "0 1"
    finally:
        pane.kill()
    assert took < 1.0, f"exit took {took:.2f} s after {signum.name} with Ctrl-S pressed"
