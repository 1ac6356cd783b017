"""Standard output for ``--json`` (and stderr for the log lines): a bounded buffer drained by
its own thread.

A reader that stops reading (``| sleep 60``, a paused pager) fills the pipe, and a write to
a full pipe blocks.  Were that write on the event loop, sampling and every exporter would
stop with it; here it blocks only the writer thread.  The loop hands over one tick at a
time as one block of whole lines; when the buffer is full the tick is dropped whole, so a
reader never sees half a line, and the drops are counted and reported once.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("bpftop-otel")

BUFFER_BYTES = 16 * 1024 * 1024
"""Bytes of whole ticks held for a slow reader (a few ticks at a thousand programs)."""


class OutputError(RuntimeError):
    """Standard output cannot take the lines (closed, or a write failed); the message says
    which, in one line."""


def check_open(fd: int) -> None:
    """Raise :class:`OutputError` when ``fd`` is not an open descriptor.

    Checked before anything else opens a file: a closed fd 1 would be reused by the next
    file opened (a BPF object, a socket), and the lines would go into it.
    """
    try:
        os.fstat(fd)
    except OSError:
        raise OutputError("standard output is closed (--json writes its lines there)") from None


def raise_for(error: OSError) -> None:
    """End the run for a failed write: a reader gone (EPIPE) as such, else one line."""
    if isinstance(error, BrokenPipeError):
        raise error
    raise OutputError(f"cannot write standard output: {error.strerror or error}")


class LineOutput:
    """Whole ticks of lines to ``fd``, written by a daemon thread.

    ``on_error`` runs in the writer thread after a write fails (the error is in
    :attr:`error`); nothing more is written after that.  With ``report`` off, drops and
    what was left behind are only counted, never logged (the log lines themselves go
    through one of these: see :class:`otel_bpf.cli.logs.QueuedStderr`).
    """

    def __init__(
        self,
        fd: int = 1,
        max_bytes: int = BUFFER_BYTES,
        on_error: Callable[[], None] | None = None,
        *,
        report: bool = True,
        thread_name: str = "bpftop-otel json",
    ) -> None:
        self.fd = fd
        self.max_bytes = max_bytes
        self.on_error = on_error
        self.report = report
        self.error: OSError | None = None
        self.dropped = 0
        """Ticks dropped because the reader was behind by ``max_bytes``."""
        self.written = 0
        """Bytes the reader has taken."""
        self._blocks: collections.deque[bytes] = collections.deque()
        self._held = 0  # bytes in _blocks plus the block being written
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._drain, name=thread_name, daemon=True)
        self._thread.start()

    @property
    def buffered(self) -> int:
        """Bytes accepted and not yet written."""
        with self._cond:
            return self._held

    def offer(self, lines: list[str]) -> bool:
        """Queue one tick's lines; False when the tick was dropped (buffer full, or the
        output failed).  Never blocks on the reader."""
        if not lines:
            return True
        return self.offer_block(("\n".join(lines) + "\n").encode("ascii"))

    def offer_block(self, block: bytes) -> bool:
        """Queue ``block`` (whole lines) as one unit; False when it was dropped."""
        with self._cond:
            if self.error is not None:
                return False
            # An empty buffer takes any tick, however large: a host with more programs than
            # the bound still gets its lines whenever the reader keeps up.
            if self._held and self._held + len(block) > self.max_bytes:
                self.dropped += 1
                if self.dropped == 1 and self.report:
                    log.warning(
                        "the --json reader is not keeping up: ticks are dropped whole "
                        "(sampling and exports go on); the count is logged at exit"
                    )
                return False
            self._blocks.append(block)
            self._held += len(block)
            self._cond.notify()
        return True

    def _drain(self) -> None:
        while True:
            with self._cond:
                while not self._blocks and not self._closing:
                    self._cond.wait()
                if not self._blocks:
                    return
                block = self._blocks[0]
            view = memoryview(block)
            try:
                while view:
                    n = os.write(self.fd, view)
                    view = view[n:]
                    with self._cond:
                        self.written += n
                        self._held -= n
                        self._cond.notify_all()
            except OSError as exc:
                with self._cond:
                    self.error = exc
                    self._blocks.clear()
                    self._held = 0
                    self._cond.notify_all()
                if self.on_error is not None:
                    self.on_error()
                return
            with self._cond:
                self._blocks.popleft()
                self._cond.notify_all()

    def wait_written(self, stall: float) -> bool:
        """Wait while the reader keeps taking bytes, until everything buffered is written;
        give up after ``stall`` seconds without progress.  True when all was written."""
        with self._cond:
            last = self.written
            deadline = time.monotonic() + stall
            while self._held and self.error is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
                if self.written != last:
                    last = self.written
                    deadline = time.monotonic() + stall
            return not self._held and self.error is None

    def close(self, stall: float) -> bool:
        """Let the writer finish what is buffered (see :meth:`wait_written`), then stop it.
        True when all was written."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        done = self.wait_written(stall)
        left_behind = self.buffered
        if not self.report:
            return done
        if left_behind:
            log.warning(
                "the --json reader stopped reading: %d bytes of lines not written", left_behind
            )
        if self.dropped:
            log.warning("%d ticks of --json lines dropped for a slow reader", self.dropped)
        return done
