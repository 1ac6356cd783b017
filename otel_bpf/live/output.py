"""Terminal output that never blocks: ordered control sequences, and only the newest frame.

A tty write blocks while the terminal takes no output: output stopped with
``tcflow(TCOOFF)`` by another process on the tty, or a terminal (a tmux pane, an ssh session)
that stops reading.  On the event loop that would stop sampling, exports and signals with
it.  :class:`TerminalOutput` writes through its own non-blocking open file description of the
same tty: a write takes what the terminal takes now and the rest waits, and the caller waits
for writability (:func:`anyio.wait_writable`) or gives up after a bounded time
(:meth:`TerminalOutput.drain`).

What waits is a queue of control sequences (written in order, never dropped) and at most one
frame: a new frame replaces the one still waiting, so a terminal that comes back gets the
newest screen, not a backlog.  A frame that has started is always finished before anything
else, so the terminal never sees half a frame followed by something else (every frame is a
full redraw).

When the view ends and the terminal still takes nothing, :func:`hand_off` gives what is left
to a small helper process that writes it once the terminal takes output again, so the
process itself can exit at once.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import stat
import subprocess
import sys
import tempfile
import time

log = logging.getLogger(__name__)

HELPER_PATIENCE = 600
"""Seconds the helper of :func:`hand_off` waits for a terminal that takes nothing before it
gives up (it also ends when the terminal hangs up)."""

HELPER_START_WAIT = 0.5
"""Seconds :func:`hand_off` waits for the helper to start writing."""

# Writes stdin (what was left for the terminal) to stdout, the terminal, in one write, then
# copies the pipe named by argv[1] (stderr from then on; -1: none).  Closing argv[2] tells
# the caller the first write is starting: once it blocks, it holds the tty's write lock, so
# the shell's prompt after our exit comes after the restore.  A write blocks for as long as
# the terminal takes nothing; the alarm bounds that wait, and only that wait.
_HELPER = f"""
import os, signal, sys

def write(data):
    view = memoryview(data)
    while view:
        signal.alarm({HELPER_PATIENCE})
        view = view[os.write(1, view):]
        signal.alarm(0)

def read_all(fd):
    chunks = []
    while True:
        data = os.read(fd, 65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)

first = read_all(0)
os.close(int(sys.argv[2]))
write(first)
if int(sys.argv[1]) >= 0:
    while True:
        data = os.read(int(sys.argv[1]), 65536)
        if not data:
            break
        write(data)
"""

_helpers: list[subprocess.Popen[bytes]] = []
"""Helpers started by :func:`hand_off`, kept so they are reaped, not reported as leaked."""


def _reopen_nonblocking(fd: int) -> int | None:
    """A new open file description of the tty on ``fd``, write-only and non-blocking.

    ``O_NONBLOCK`` set on ``fd`` itself would be shared with everything else holding that
    description: our stderr (a log line would fail with EAGAIN) and the shell after we exit.
    None when ``fd`` is not a tty or cannot be reopened.
    """
    try:
        if not os.isatty(fd):
            return None
        new = os.open(
            f"/proc/self/fd/{fd}",
            os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC,
        )
    except OSError:
        return None
    try:
        same = os.isatty(new) and os.fstat(new).st_rdev == os.fstat(fd).st_rdev
    except OSError:
        same = False
    if not same:
        os.close(new)
        return None
    return new


class TerminalOutput:
    """Bytes for the terminal on ``fd``: controls in order, frames newest-only, no blocking.

    Falls back to blocking writes on ``fd`` itself when the tty cannot be reopened
    (:attr:`nonblocking` is then False).  Not thread-safe: the event loop owns it.
    """

    def __init__(self, fd: int) -> None:
        self.target_fd = fd
        reopened = _reopen_nonblocking(fd)
        self.nonblocking = reopened is not None
        self.fd = fd if reopened is None else reopened
        """The descriptor written to (wait on it for writability)."""
        self._queue: collections.deque[tuple[bool, bytes]] = collections.deque()
        self._current = memoryview(b"")  # started: finished before anything else
        self.frames_dropped = 0
        """Frames replaced by a newer one before they were started."""
        if not self.nonblocking:
            log.debug("live view: the terminal could not be reopened; writes may block")

    def send(self, data: bytes) -> None:
        """Queue a control sequence: written in order, never dropped."""
        if data:
            self._queue.append((False, data))

    def show(self, frame: bytes) -> None:
        """Queue ``frame`` in place of any frame still waiting (only the newest counts)."""
        kept = [item for item in self._queue if not item[0]]
        self.frames_dropped += len(self._queue) - len(kept)
        self._queue = collections.deque(kept)
        self._queue.append((True, frame))

    @property
    def pending(self) -> bool:
        """Something is still to be written."""
        return bool(self._current) or bool(self._queue)

    def pump(self) -> bool:
        """Write what the terminal takes now; True when nothing is left.

        Raises OSError when the terminal fails the write (EIO once it hung up).
        """
        while True:
            if not self._current:
                if not self._queue:
                    return True
                self._current = memoryview(self._queue.popleft()[1])
            try:
                written = os.write(self.fd, self._current)
            except BlockingIOError:
                return False
            if written <= 0:
                return False
            self._current = self._current[written:]

    def drain(self, timeout: float) -> bool:
        """Write everything, waiting at most ``timeout`` seconds; True when all went out."""
        deadline = time.monotonic() + timeout
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        while not self.pump():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # POLLHUP/POLLERR wake us too; the next write then raises.
            poller.poll(max(1, int(left * 1000)))
        return True

    def discard_frames(self) -> None:
        """Drop the frames still waiting (not one already started)."""
        self._queue = collections.deque(item for item in self._queue if not item[0])

    def take(self) -> bytes:
        """Everything not yet written, in order (the rest of a started frame first); the
        output is empty afterwards."""
        rest = bytes(self._current) + b"".join(data for _, data in self._queue)
        self._current = memoryview(b"")
        self._queue.clear()
        return rest

    def close(self) -> None:
        """Close the reopened descriptor (what is still queued is dropped; :meth:`take` it
        first to keep it)."""
        if self.fd != self.target_fd:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = self.target_fd
        self._current = memoryview(b"")
        self._queue.clear()


def same_terminal(fd_a: int, fd_b: int) -> bool:
    """Both descriptors are the same terminal device."""
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return stat.S_ISCHR(a.st_mode) and stat.S_ISCHR(b.st_mode) and a.st_rdev == b.st_rdev


def _holding(data: bytes) -> int:
    """A descriptor to read ``data`` from, from the start (in memory when the kernel can)."""
    try:
        fd = os.memfd_create("bpftop-otel-terminal", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        fd = os.dup(tempfile.TemporaryFile().fileno())  # noqa: SIM115 (the dup outlives it)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def hand_off(data: bytes, tty_fd: int, *, stderr_too: bool) -> bool:
    """Have a helper process write ``data`` to the terminal on ``tty_fd`` once it takes output.

    For a terminal that takes nothing when the view ends: the caller can exit at once and
    the terminal is still restored when it comes back.  With ``stderr_too`` (stderr is that
    terminal), stderr is redirected into the helper too, so the log lines that follow come
    after ``data`` and never block.  The helper holds nothing but ``data``, the pipe and the
    terminal; it ends after the last byte (the pipe closes when this process exits), when
    the terminal hangs up, or after :data:`HELPER_PATIENCE` seconds of the terminal taking
    nothing.

    Returns False when no helper could be started; ``data`` is then lost and, with
    ``stderr_too``, stderr goes to /dev/null rather than block the exit.
    """
    _helpers[:] = [p for p in _helpers if p.poll() is None]
    opened: list[int] = []
    try:
        held = _holding(data)
        opened.append(held)
        read_end = write_end = -1
        if stderr_too:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            opened += [read_end, write_end]
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        opened += [ready_r, ready_w]
        helper = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _HELPER, str(read_end), str(ready_w)],
            stdin=held,
            stdout=tty_fd,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            pass_fds=(ready_w,) if read_end < 0 else (read_end, ready_w),
            # Out of the terminal's process groups: a Ctrl-C meant for the shell does not
            # end it, and a hangup ends it through the failed write.
            start_new_session=True,
        )
    except OSError as exc:
        log.debug("live view: no helper for the terminal restore: %s", exc)
        if stderr_too:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
        return False
    else:
        _helpers.append(helper)
        os.close(ready_w)
        opened.remove(ready_w)
        # Until the helper's first write starts (EOF here), or it died, or the wait ends.
        select.select([ready_r], [], [], HELPER_START_WAIT)
        if stderr_too:
            os.dup2(write_end, 2)
        return True
    finally:
        for fd in opened:
            os.close(fd)
