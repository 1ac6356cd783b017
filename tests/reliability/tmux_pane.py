"""A command in its own tmux server, for the live view: capture, flags, exit status.

The command runs as ``CMD; echo __EXIT__$?; sleep 60`` so the exit status shows and the pane
stays; ``#{alternate_on} #{cursor_flag}`` is ``1 0`` while the view runs, ``0 1`` restored.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path

from peers import children_of, cli_env, wait_until


class Pane:
    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.socket = f"otelbpf-rel-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        cmd = " ".join(shlex.quote(a) for a in args)
        subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", "new-session", "-d",
             "-x", "120", "-y", "40", "-s", "live", f"{cmd}; echo __EXIT__$?; sleep 60"],
            check=True, env={"LC_ALL": "C", **(env or cli_env()), "TERM": "xterm-256color"},
            cwd=cwd, timeout=10,
        )  # fmt: skip

    def tmux(self, *args: str) -> str:
        out = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        self.last_error = out.stderr
        return out.stdout

    def capture(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "live")

    def flags(self) -> str:
        return self.tmux("display", "-p", "-t", "live", "#{alternate_on} #{cursor_flag}").strip()

    def program_pid(self) -> int:
        shell = int(self.tmux("display", "-p", "-t", "live", "#{pane_pid}").strip())
        kids = wait_until(lambda: children_of(shell), 10, interval=0.1)
        assert kids, f"the command did not start:\n{self.capture()}"
        return int(kids[0])

    def wait_for(self, needle: str, timeout: float) -> str:
        def seen() -> str:
            text = self.capture()
            return text if needle in text else ""

        found = wait_until(seen, timeout, 0.2)
        assert found, f"no {needle!r} within {timeout} s; pane:\n{self.capture()}{self.last_error}"
        return str(found)

    def exit_status(self, timeout: float = 30) -> int:
        text = self.wait_for("__EXIT__", timeout)
        return int(re.findall(r"__EXIT__(\d+)", text)[-1])

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)
