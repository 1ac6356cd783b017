"""The terminal: every escape sequence the live view emits, and entering/leaving live mode.

No other module holds raw escape sequences; renderers produce plain text lines with a
:class:`Style`, and :func:`compose_frame` turns them into one write per frame.
"""

from __future__ import annotations

import enum
import os
import termios
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType

from otel_bpf.live.output import TerminalOutput
from otel_bpf.live.sanitize import display_width

RESTORE_TIMEOUT = 0.1
"""Seconds :meth:`Terminal.leave` waits for the terminal to take the restore sequence (a
terminal taking output takes its few bytes at once; one that does not is not waited for)."""


class Esc(str, enum.Enum):
    """The escape sequences of the live view (ECMA-48 / xterm private modes)."""

    ALT_SCREEN_ON = "\x1b[?1049h"
    ALT_SCREEN_OFF = "\x1b[?1049l"
    CURSOR_HIDE = "\x1b[?25l"
    CURSOR_SHOW = "\x1b[?25h"
    WRAP_OFF = "\x1b[?7l"
    WRAP_ON = "\x1b[?7h"
    # Synchronized update (BSU/ESU): the terminal shows the frame only when complete.
    # Terminals without it ignore the private mode.
    SYNC_BEGIN = "\x1b[?2026h"
    SYNC_END = "\x1b[?2026l"
    HOME = "\x1b[H"
    CLEAR_SCREEN = "\x1b[2J"
    ERASE_LINE_END = "\x1b[K"
    ERASE_BELOW = "\x1b[J"
    SGR_RESET = "\x1b[0m"
    SGR_BOLD = "\x1b[1m"
    SGR_DIM = "\x1b[2m"
    SGR_REVERSE = "\x1b[7m"
    SGR_BOLD_REVERSE = "\x1b[1;7m"


def move_to(row: int, col: int = 1) -> str:
    """Cursor to ``row``, ``col`` (1-based)."""
    return f"\x1b[{row};{col}H"


class Style(enum.Enum):
    """How a line of a frame is drawn."""

    NORMAL = ""
    TITLE = Esc.SGR_BOLD.value
    HEADER = Esc.SGR_BOLD_REVERSE.value
    SELECTED = Esc.SGR_REVERSE.value
    DIM = Esc.SGR_DIM.value
    WARN = Esc.SGR_BOLD.value


@dataclass(frozen=True, slots=True)
class Line:
    """One screen line: plain, already sanitised text exactly as wide as the screen."""

    text: str
    style: Style = Style.NORMAL


def compose_frame(lines: Sequence[Line], height: int, width: int) -> str:
    """A whole frame as one string: BSU, each line addressed and written, ESU.

    Lines are addressed one by one (never ``\\r\\n``) so a full last line cannot scroll the
    screen, and nothing is cleared first, so the frame never flickers.  A line narrower
    than the screen is followed by erase-to-end-of-line; a full-width one is not, because
    with line wrap off the cursor stays on the last column and the erase would take that
    column's character with it.
    """
    parts = [Esc.SYNC_BEGIN.value, Esc.HOME.value]
    for row, line in enumerate(lines[:height], start=1):
        parts.append(move_to(row))
        if line.style is Style.NORMAL:
            parts.append(line.text)
        else:
            parts.append(line.style.value + line.text + Esc.SGR_RESET.value)
        if display_width(line.text) < width:
            parts.append(Esc.ERASE_LINE_END.value)
    if len(lines) < height:
        parts.append(move_to(len(lines) + 1))
        parts.append(Esc.ERASE_BELOW.value)
    parts.append(Esc.SYNC_END.value)
    return "".join(parts)


class TerminalUnavailable(RuntimeError):
    """The live view cannot run here; the message says why (see :func:`check_terminal`)."""


def check_terminal(
    stdin_fd: int = 0, stdout_fd: int = 1, environ: dict[str, str] | None = None
) -> str | None:
    """None when stdin and stdout are a usable terminal, else the message to show instead."""
    env = dict(os.environ) if environ is None else environ
    if not os.isatty(stdout_fd):
        return "the live view needs a terminal: standard output is not a tty (use --json instead)"
    if not os.isatty(stdin_fd):
        return "the live view needs a terminal: standard input is not a tty"
    term = env.get("TERM", "")
    if term in ("", "dumb", "unknown"):
        shown = term or "unset"
        return f"the live view needs a terminal with cursor addressing (TERM is {shown})"
    return None


def _set_live_mode(fd: int) -> None:
    """cbreak (keys one by one, Ctrl-C/Ctrl-Z still signal) without XON/XOFF flow control."""
    tty.setcbreak(fd, termios.TCSANOW)
    mode = termios.tcgetattr(fd)
    mode[0] &= ~(termios.IXON | termios.IXOFF)
    termios.tcsetattr(fd, termios.TCSANOW, mode)


class Terminal:
    """Live mode on a tty: cbreak input, alternate screen, hidden cursor, no line wrap.

    :meth:`enter` applies each step and records its inverse; :meth:`leave` runs every
    inverse, newest first, even when some fail (a hung-up tty makes writes fail, and one
    failed write must not leave the rest undone).  Both may be called again, which is how
    Ctrl-Z suspends and ``fg`` resumes.

    Output goes through a :class:`~otel_bpf.live.output.TerminalOutput` (:attr:`output`,
    open from the first :meth:`enter` to :meth:`close`): no write blocks.  What the terminal
    does not take at once waits in it; the caller pumps it when the terminal is writable.
    """

    def __init__(self, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self._undo: list[Callable[[], object]] = []
        self._output: TerminalOutput | None = None
        self.failures: list[BaseException] = []
        """Exceptions raised by undo steps on the last :meth:`leave` (they are not raised)."""

    @property
    def active(self) -> bool:
        """Live mode is on."""
        return bool(self._undo)

    @property
    def output(self) -> TerminalOutput:
        """Where everything for the terminal goes (opened on first use)."""
        if self._output is None:
            self._output = TerminalOutput(self.stdout_fd)
        return self._output

    def write(self, text: str) -> bool:
        """Queue a control sequence and write what the terminal takes now; True when
        nothing waits.  Raises OSError when the terminal fails the write (EIO)."""
        self.output.send(text.encode("utf-8", "replace"))
        return self.output.pump()

    def _queue(self, text: str) -> None:
        self.output.send(text.encode("utf-8", "replace"))

    def show(self, frame: str) -> bool:
        """Queue ``frame`` in place of a frame still waiting and write what the terminal
        takes now; True when nothing waits."""
        self.output.show(frame.encode("utf-8", "replace"))
        return self.output.pump()

    def clear_sequence(self) -> str:
        """Erase the whole screen (only for an explicit repaint; frames never clear)."""
        return Esc.CLEAR_SCREEN.value

    def _step(self, do: Callable[[], object], undo: Callable[[], object]) -> None:
        do()
        self._undo.append(undo)

    def enter(self) -> None:
        """Switch the terminal to live mode (no-op when already there)."""
        if self._undo:
            return
        try:
            # Python 3.11's tty.setcbreak does not return the old attributes; save them.
            saved = termios.tcgetattr(self.stdin_fd)
            # Flow control off: with IXON, Ctrl-S stops the tty's output and the next frame
            # write would block the whole process (signals, sampling, exports).  The restore
            # is immediate (TCSANOW): waiting for output to drain could wait forever.
            self._step(
                lambda: _set_live_mode(self.stdin_fd),
                lambda: termios.tcsetattr(self.stdin_fd, termios.TCSANOW, saved),
            )
            # The restore steps only queue: leave() writes them in one go, bounded in time.
            self._step(
                lambda: self.write(Esc.ALT_SCREEN_ON.value),
                lambda: self._queue(Esc.ALT_SCREEN_OFF.value),
            )
            self._step(
                lambda: self.write(Esc.CURSOR_HIDE.value),
                lambda: self._queue(Esc.CURSOR_SHOW.value),
            )
            self._step(
                lambda: self.write(Esc.WRAP_OFF.value),
                # A frame cut short by a failed write may have left a synchronized update
                # open and attributes set: end both.
                lambda: self._queue(Esc.SYNC_END.value + Esc.SGR_RESET.value + Esc.WRAP_ON.value),
            )
        except BaseException:
            self.leave()
            raise

    def leave(self, timeout: float = RESTORE_TIMEOUT) -> list[BaseException]:
        """Undo every step of :meth:`enter`, newest first; returns the steps' failures.

        The terminal settings come back at once.  Frames still waiting are dropped; the
        restore sequence is written within ``timeout`` seconds if the terminal takes it,
        else it stays queued in :attr:`output` (see :meth:`close`).
        """
        self.failures = []
        if self._undo and self._output is not None:
            self._output.discard_frames()
        while self._undo:
            undo = self._undo.pop()
            try:
                undo()
            except Exception as exc:  # keep undoing: the terminal matters more
                self.failures.append(exc)
        if self._output is not None and self._output.pending:
            try:
                self._output.drain(timeout)
            except OSError as exc:  # hung up: nothing more can reach it
                self.failures.append(exc)
                self._output.take()
        return self.failures

    def close(self) -> bytes:
        """Close the output; returns what the terminal never took (after a :meth:`leave`
        whose restore it did not take: hand it to :func:`~otel_bpf.live.output.hand_off`)."""
        if self._output is None:
            return b""
        rest = self._output.take()
        self._output.close()
        self._output = None
        return rest

    def size(self) -> tuple[int, int]:
        """``(columns, lines)`` of the terminal; 80 columns and 24 lines for what it cannot
        tell (no answer, or 0: a serial line or a pty whose size was never set)."""
        try:
            size = os.get_terminal_size(self.stdout_fd)
        except OSError:
            return 80, 24
        return size.columns or 80, size.lines or 24

    def __enter__(self) -> Terminal:
        self.enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.leave()
        self.close()
