"""The live view under a flood: 5,000 SIGWINCH in a tight loop, and a 20,000-key paste.

The signal storm prints nothing on stderr (it once printed ``Exception ignored ...
BlockingIOError`` for a full signal wakeup fd), ends with a frame at the final size, and a
SIGTERM right after it still ends the view within 1 s.  The paste, with 2,000 programs in
the table, keeps the table on screen and is handled, every key of it, within a second.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from peers import cli_command, wait_until
from process_probe import gone
from tmux_pane import Pane

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(150),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

LOADER = Path(__file__).with_name("churn_loader.py")
PROGRAMS = 2000
KEYS = 20_000


def frame_at(text: str, width: int, height: int) -> bool:
    """A frame drawn for ``width`` x ``height``: the position line right-aligned on the last
    column, within the first ``height`` lines (a frame of the old, larger size had it lower
    and further right, and the pane only crops it)."""
    lines = text.splitlines()[:height]
    return any(re.search(r"rows [\d-]+ of \d+$", line) and len(line) == width for line in lines)


def test_sigwinch_storm_is_quiet_and_ends_at_the_final_size(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    pane = Pane(
        ["sh", "-c", f'exec "$0" "$@" 2>{err}', *cli_command(), "--live", "--interval", "5"],
        tmp_path,
    )
    try:
        pane.wait_for("rows ", 45)
        pid = pane.program_pid()
        pane.tmux("resize-window", "-t", "live", "-x", "90", "-y", "30")
        for _ in range(5000):
            os.kill(pid, signal.SIGWINCH)
        signalled = time.monotonic()
        os.kill(pid, signal.SIGTERM)  # right behind the storm: must not be lost in it
        assert wait_until(lambda: gone(pid), 5, 0.02), "no exit within 5 s of SIGTERM"
        took = time.monotonic() - signalled
        assert pane.exit_status(10) == 0
        assert pane.flags() == "0 1"
    finally:
        pane.kill()
    stderr = err.read_text()
    assert "Exception ignored" not in stderr and "Traceback" not in stderr, stderr
    assert "Error" not in stderr, stderr
    assert took < 1.0, f"exit took {took:.2f} s after SIGTERM behind 5,000 SIGWINCH"


def test_sigwinch_storm_redraws_at_the_final_size(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    pane = Pane(
        ["sh", "-c", f'exec "$0" "$@" 2>{err}', *cli_command(), "--live", "--interval", "5"],
        tmp_path,
    )
    try:
        pane.wait_for("rows ", 45)
        pid = pane.program_pid()
        for size in range(100):  # the window dragged about, then 5,000 more signals
            pane.tmux("resize-window", "-t", "live", "-x", str(60 + size % 50), "-y", "25")
        pane.tmux("resize-window", "-t", "live", "-x", "90", "-y", "30")
        for _ in range(5000):
            os.kill(pid, signal.SIGWINCH)
        # Long before the next sample (5 s): the frame comes from the signals.
        assert wait_until(lambda: frame_at(pane.capture(), 90, 30), 3, 0.05), pane.capture()
        pane.tmux("send-keys", "-t", "live", "q")
        assert pane.exit_status(10) == 0
    finally:
        pane.kill()
    stderr = err.read_text()
    assert "Exception ignored" not in stderr and "Traceback" not in stderr, stderr


def test_a_20000_key_paste_keeps_the_screen_and_is_handled_within_a_second(
    tmp_path: Path,
) -> None:
    prefix = f"ps{os.getpid() % 10000}_"
    status = tmp_path / "loader.json"
    loader = subprocess.Popen(
        [sys.executable, str(LOADER), "--total", str(PROGRAMS), "--rate", "5000",
         "--alive", str(PROGRAMS), "--prefix", prefix, "--status", str(status)],
        stdin=subprocess.PIPE,
    )  # fmt: skip
    pane = None
    shown = None
    blank: list[float] = []
    try:
        loaded = wait_until(
            lambda: status.exists() and json.loads(status.read_text() or "{}").get("done"), 60
        )
        assert loaded, "the programs did not load"
        pane = Pane([*cli_command(), "--live", "--interval", "1"], tmp_path)
        pane.wait_for("rows ", 45)
        # Only ours (all idle: sorted by id), so the last row is the newest of them.
        pane.tmux("send-keys", "-t", "live", "f")
        pane.tmux("send-keys", "-t", "live", "-l", prefix)
        pane.tmux("send-keys", "-t", "live", "Enter")
        pane.wait_for(f"of {PROGRAMS}", 10)
        paste = tmp_path / "paste"
        # Down 19,999 times (harmless), then ? whose help screen shows the paste was handled.
        paste.write_text("j" * (KEYS - 1) + "?")
        pane.tmux("load-buffer", str(paste))
        started = time.monotonic()
        pane.tmux("paste-buffer", "-t", "live")
        while time.monotonic() - started < 10:
            text = pane.capture()
            if "live view: keys" in text:
                shown = time.monotonic() - started
                break
            if "rows " not in text or prefix not in text:
                blank.append(round(time.monotonic() - started, 2))
            time.sleep(0.02)
        if shown is not None:
            pane.tmux("send-keys", "-t", "live", "Escape")
            last = re.compile(rf"^> \d+ +socket_filter +{prefix}{PROGRAMS - 1} ", re.M)
            pane.wait_for("rows ", 5)
            assert last.search(pane.capture()), pane.capture()  # every move was applied
            pane.tmux("send-keys", "-t", "live", "q")
            assert pane.exit_status(15) == 0
    finally:
        if pane is not None:
            pane.kill()
        loader.terminate()
        loader.wait(30)
        if loader.stdin is not None:
            loader.stdin.close()
    assert not blank, f"neither the table nor the help on the screen at {blank} s"
    assert shown is not None, "the paste was not handled within 10 s"
    print(f"{KEYS} keys over {PROGRAMS} programs: handled {shown:.2f} s after the paste")
    assert shown < 1.0, f"the paste was handled after {shown:.2f} s"
