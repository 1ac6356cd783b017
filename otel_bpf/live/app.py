"""The live view's event loop: snapshots, keys and signals in, one frame per change out.

Everything that decides what is on the screen is pure (:mod:`~otel_bpf.live.state`,
:mod:`~otel_bpf.live.screen`); this module only wires it to the terminal, the sampler and the
signals, and makes sure the terminal is restored on every way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import select
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING, Any

import anyio

from otel_bpf.live.context import RenderContext
from otel_bpf.live.history import ChartHistory
from otel_bpf.live.keys import KeyDecoder, KeyEvent
from otel_bpf.live.options import LiveOptions
from otel_bpf.live.output import hand_off, same_terminal
from otel_bpf.live.screen import render_screen
from otel_bpf.live.state import (
    Action,
    RowIds,
    ViewState,
    apply_key,
    table_columns,
    visible_rows,
)
from otel_bpf.live.terminal import Terminal, TerminalUnavailable, check_terminal, compose_frame

if TYPE_CHECKING:
    from anyio import CancelScope

    from otel_bpf.sampler import Sampler

log = logging.getLogger(__name__)

ESCAPE_QUIET = 0.05
"""Seconds of quiet after a lone ESC before it counts as the Escape key."""

QUIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
"""End the view cleanly (SIGINT is Ctrl-C: the terminal stays in cbreak, which keeps ISIG)."""

READ_BATCH = 16 * 1024
"""Bytes of keys read before they are applied and drawn: a paste is a few frames, not one
per key, and the loop still gets back to sampling and signals between batches."""

RESIZE_PAUSE = 0.05
"""Seconds between frames drawn for SIGWINCH: a resize storm (a window dragged, thousands of
signals) is at most one frame per pause, and the last one is at the final size."""


def stop_self() -> None:
    """Stop this process as the shell's Ctrl-Z would; returns once continued (``fg``)."""
    os.kill(os.getpid(), signal.SIGSTOP)


class LiveView:
    """The view's state plus the one place that draws it."""

    def __init__(self, sampler: Sampler, options: LiveOptions, terminal: Terminal) -> None:
        self.sampler = sampler
        self.options = options
        self.terminal = terminal
        self.glyphs = options.resolve_glyphs()
        self.state = ViewState()
        self.charts = ChartHistory(options.history)
        """What the detail view charts, fed from the sampler's snapshots on every frame."""
        self.page = 1
        self.host = platform.node()
        self.kernel = platform.release()
        self.frames = 0
        self.signals_ready = anyio.Event()
        self.scope: CancelScope | None = None
        """Cancelled to end the view (set by :func:`run_live`)."""
        self.output_waiting = anyio.Event()
        """Set when the terminal did not take everything: :func:`_write_out` waits for it."""
        self.redraw_wanted = anyio.Event()
        """Set by SIGWINCH and SIGCONT: :func:`_redraw_on_request` draws."""
        self.quit_signal: int | None = None
        """A quit signal seen by its handler, in case its wakeup byte was lost (see
        :func:`_watch_quit_signals`)."""

    def context(self) -> RenderContext:
        """What the next frame is drawn from."""
        width, height = self.terminal.size()
        # The sampler's own history is short (a few passes): every pass it holds that the
        # charts lack is added now, so a frame skipped under load loses no pass.
        self.charts.catch_up(self.sampler.history)
        return RenderContext(
            snapshot=self.sampler.latest,
            history=self.charts,
            width=width,
            height=height,
            glyphs=self.glyphs,
            host=self.host,
            kernel=self.kernel,
            interval=self.sampler.interval,
            now=time.time(),
            per_cpu=self.sampler.options.per_cpu,
        )

    def draw(self) -> None:
        """Render the whole frame and hand it to the terminal in place of any frame the
        terminal has not started taking; never waits for the terminal."""
        ctx = self.context()
        lines, self.state, self.page = render_screen(ctx, self.state)
        if self._written(lambda: self.terminal.show(compose_frame(lines, ctx.height, ctx.width))):
            self.frames += 1

    def _written(self, write: Callable[[], bool]) -> bool:
        """Run a terminal write; False when the terminal failed it (the view then ends)."""
        try:
            done = write()
        except OSError as exc:
            self.lost_terminal(exc)
            return False
        if not done:
            self.output_waiting.set()
        return True

    def lost_terminal(self, exc: OSError) -> None:
        """EIO once the terminal hangs up (the SIGHUP may still be on its way): there is
        nobody to show frames to, so the view ends like on SIGHUP."""
        log.debug("writing the terminal failed: %s", exc)
        if self.scope is not None:
            self.scope.cancel()

    def handle(self, keys: list[KeyEvent]) -> bool:
        """Apply keys to the state; True when the user asked to quit.

        The rows the keys move over are worked out once per batch, and again only when a
        key changes the filter or the sort: a 20,000-key paste is not 20,000 sorts.
        """
        snap = self.sampler.latest
        programs = snap.programs if snap else ()
        ids: RowIds | None = None
        basis: tuple[object, ...] = ()
        columns = table_columns(self.sampler.options.per_cpu)
        for key in keys:
            now = (self.state.filter_text, self.state.sort_column, self.state.sort_desc)
            if ids is None or now != basis:
                ids = RowIds(s.id for s in visible_rows(programs, self.state))
                basis = now
            self.state, action = apply_key(self.state, key, ids, self.page, columns)
            if action is Action.QUIT:
                return True
            if action is Action.REDRAW:
                self._written(lambda: self.terminal.write(self.terminal.clear_sequence()))
        return False

    def enter(self) -> None:
        """Live mode on (at the start, and after Ctrl-Z), full frame now."""
        self.terminal.enter()
        if self.terminal.output.pending:
            self.output_waiting.set()
        self.draw()


async def _follow_snapshots(view: LiveView) -> None:
    with view.sampler.subscribe() as subscription:
        async for _ in subscription:
            if view.quit_signal is not None:
                _leave_for(view, view.quit_signal)
                return
            view.draw()


async def _write_out(view: LiveView) -> None:
    """Give the terminal what it did not take at once, as it becomes writable.

    Only this task waits for the terminal; frames drawn meanwhile replace the one waiting.
    """
    while True:
        await view.output_waiting.wait()
        view.output_waiting = anyio.Event()
        output = view.terminal.output
        try:
            while not output.pump():
                await anyio.wait_writable(output.fd)
        except OSError as exc:
            view.lost_terminal(exc)
            return


async def _redraw_on_request(view: LiveView) -> None:
    while True:
        await view.redraw_wanted.wait()
        view.redraw_wanted = anyio.Event()
        if view.quit_signal is not None:
            # Noted by its handler while a storm of these kept the loop from hearing it.
            _leave_for(view, view.quit_signal)
            return
        view.draw()
        # Requests during the pause make one more frame after it, drawn at the size then.
        await anyio.sleep(RESIZE_PAUSE)


def read_available(fd: int, limit: int = READ_BATCH) -> bytes | None:
    """What the terminal has for us now, up to ``limit`` bytes, in as many reads as that
    takes (a tty hands over at most its buffer, 4 KiB, per read); b"" at end of input,
    None when there was nothing after all."""
    chunks: list[bytes] = []
    size = 0
    more = select.poll()  # not select(): stdin may be a descriptor above FD_SETSIZE
    more.register(fd, select.POLLIN)
    while size < limit:
        try:
            # cbreak mode with VMIN=1: returns what is buffered, does not block once readable.
            data = os.read(fd, limit - size)
        except BlockingIOError:
            break
        if not data:
            if not chunks:
                return b""
            break  # the end of input shows again on the next read
        chunks.append(data)
        size += len(data)
        if not more.poll(0):
            break
    return b"".join(chunks) if chunks else None


async def _read_keys(view: LiveView, scope: CancelScope) -> None:
    fd = view.options.stdin_fd
    decoder = KeyDecoder()
    while True:
        if decoder.pending:
            with anyio.move_on_after(ESCAPE_QUIET) as quiet:
                await anyio.wait_readable(fd)
            if quiet.cancelled_caught:
                if view.handle(decoder.flush()):
                    scope.cancel()
                    return
                view.draw()
                continue
        else:
            await anyio.wait_readable(fd)
        try:
            data = read_available(fd)
        except OSError as exc:  # EIO: the terminal hung up
            log.debug("reading the terminal failed: %s", exc)
            scope.cancel()
            return
        if data is None:
            continue
        if not data:
            scope.cancel()
            return
        # One batch of keys, one frame.
        if view.handle(decoder.feed(data)):
            scope.cancel()
            return
        view.draw()


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _quiet_signal_wakeup() -> None:
    """No warning when the signal wakeup fd is full.

    asyncio's ``add_signal_handler`` sets the wakeup fd with warnings on: a burst of signals
    faster than the loop reads them (5,000 SIGWINCH) fills it, and each further signal prints
    ``Exception ignored ... BlockingIOError`` to stderr, the very terminal the view is on.
    The dropped wakeups are harmless for SIGWINCH (one frame at the final size follows
    anyway) and covered for the quit signals by :func:`_watch_quit_signals`.  (trio sets it
    without warnings, and its handlers never lose a signal.)
    """
    if not _on_asyncio():
        return
    try:
        fd = signal.set_wakeup_fd(-1)
        if fd != -1:
            signal.set_wakeup_fd(fd, warn_on_full_buffer=False)
    except (ValueError, OSError) as exc:  # not the main thread: no signal handling here
        log.debug("signal wakeup fd: %s", exc)


def _watch_quit_signals(view: LiveView) -> None:
    """Record quit signals in their Python handler too, not only through the wakeup fd.

    asyncio learns which signal arrived from the byte its handler writes to the wakeup fd;
    with that fd full (a signal storm) the byte is dropped and a SIGTERM would be lost.  The
    Python-level handler still runs, so it notes the signal, and the view's tasks look at
    the note on every signal and every sample.  (Not under trio: it queues every signal in
    its handler, and re-raises those still queued when the view stops listening.)
    """
    if not _on_asyncio():
        return
    for signum in QUIT_SIGNALS:
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def note(sig: int, frame: FrameType | None, previous: Any = previous) -> None:
            view.quit_signal = sig
            previous(sig, frame)

        signal.signal(signum, note)


def _leave_for(view: LiveView, signum: int) -> None:
    log.info("live view: %s received, leaving", signal.Signals(signum).name)
    if view.scope is not None:
        view.scope.cancel()


async def _handle_signals(view: LiveView) -> None:
    with (
        anyio.open_signal_receiver(signal.SIGTSTP, *QUIT_SIGNALS) as received,
        _RedrawSignals(view),
    ):
        await _receive_signals(view, received)


def _keep_ignoring(signum: int, frame: FrameType | None) -> None:
    """What SIGWINCH and SIGCONT do once the view is gone: nothing (their default), as a
    Python handler (see :class:`_RedrawSignals`)."""


class _RedrawSignals:
    """SIGWINCH and SIGCONT ask for a full frame, through a Python handler of the view's own.

    Not through the event loop's signal handling: leaving, it puts back the default action,
    and a signal caught just before (a window still being dragged, a storm) but handled
    after that raises ``OSError: Signal 28 ignored due to race condition`` wherever the main
    thread is then.  This handler is replaced by another Python handler instead, never by
    the default.  It runs in the main thread between two bytecodes, so it only schedules the
    request on the loop (thread- and signal-safe), once until the loop has taken it.
    """

    SIGNALS = (signal.SIGWINCH, signal.SIGCONT)

    def __init__(self, view: LiveView) -> None:
        self._view = view
        self._scheduled = False
        self._previous: dict[int, Any] = {}
        self._schedule: Callable[[Callable[[], None]], object] | None = None

    def __enter__(self) -> _RedrawSignals:
        if _on_asyncio():
            self._schedule = asyncio.get_running_loop().call_soon_threadsafe
        else:
            import trio

            self._schedule = trio.lowlevel.current_trio_token().run_sync_soon
        for signum in self.SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._caught)
        return self

    def _caught(self, signum: int, frame: FrameType | None) -> None:
        if self._scheduled or self._schedule is None:
            return
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._schedule(self._request)

    def _request(self) -> None:
        self._scheduled = False
        self._view.redraw_wanted.set()

    def __exit__(self, *exc: object) -> None:
        self._schedule = None
        for signum, previous in self._previous.items():
            keep = previous if callable(previous) else _keep_ignoring
            signal.signal(signum, keep)


async def _receive_signals(view: LiveView, received: AsyncIterator[int]) -> None:
    _quiet_signal_wakeup()
    _watch_quit_signals(view)
    view.signals_ready.set()
    async for signum in received:
        leaving = signum if signum in QUIT_SIGNALS else view.quit_signal
        if leaving is not None:
            _leave_for(view, leaving)
            return
        if signum == signal.SIGTSTP:
            # Our handler replaced the default stop action: restore the terminal, stop
            # for real, and come back in live mode when the shell continues us (fg).
            view.terminal.leave()
            stop_self()
            view.enter()
            continue


@contextmanager
def _logging_diverted() -> Iterator[list[logging.LogRecord]]:
    """Keep log records off the screen while the view is up; replay them afterwards.

    Root handlers that write to a stream (stderr, usually this very terminal) are set aside
    and a bounded in-memory list takes their records; once the terminal is restored the
    records go to the set-aside handlers.  With no root handler at all, Python's
    last-resort handler would write warnings to stderr, so the list takes those and they
    go to it afterwards.  Other handlers (files, a buffering handler) are left alone.
    """
    root = logging.getLogger()
    aside = [
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    targets: list[logging.Handler] = list(aside)
    if not root.handlers and logging.lastResort is not None:
        targets.append(logging.lastResort)
    kept: list[logging.LogRecord] = []
    if not targets:
        yield kept
        return

    class _Ring(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if len(kept) >= 500:
                del kept[0]
            kept.append(record)

    ring = _Ring(level=min(t.level for t in targets) if aside else logging.WARNING)
    for handler in aside:
        root.removeHandler(handler)
    root.addHandler(ring)
    try:
        yield kept
    finally:
        root.removeHandler(ring)
        for handler in aside:
            root.addHandler(handler)
        for record in kept:
            for target in targets:
                if record.levelno >= target.level:
                    target.handle(record)


async def run_live(sampler: Sampler, options: LiveOptions | None = None) -> None:
    """Show the live view of ``sampler``'s snapshots until the user quits.

    Returns on ``q``, Ctrl-C (SIGINT), SIGTERM or SIGHUP; cancellation of the surrounding
    task group ends it too.  The sampler must be running (``tg.start(sampler.run)``); while
    the view is up it is asked to look up owners and maps.  The terminal is restored on
    every way out, an exception included.  Raises :class:`TerminalUnavailable` when stdin or
    stdout is not a usable terminal (see :func:`check_terminal`).
    """
    options = options or LiveOptions()
    problem = check_terminal(options.stdin_fd, options.stdout_fd)
    if problem is not None:
        raise TerminalUnavailable(problem)
    terminal = Terminal(options.stdin_fd, options.stdout_fd)
    view = LiveView(sampler, options, terminal)
    # The Process column and the maps of the detail view need these lookups.
    asked = sampler.options
    sampler.options = replace(asked, owners=True, maps=True)
    try:
        with _logging_diverted():
            try:
                async with anyio.create_task_group() as tg:
                    view.scope = tg.cancel_scope
                    tg.start_soon(_handle_signals, view)
                    await view.signals_ready.wait()
                    tg.start_soon(_write_out, view)
                    view.enter()
                    tg.start_soon(_follow_snapshots, view)
                    tg.start_soon(_read_keys, view, tg.cancel_scope)
                    tg.start_soon(_redraw_on_request, view)
            finally:
                _restore(terminal)
    finally:
        sampler.options = asked


def _restore(terminal: Terminal) -> None:
    """Leave live mode without waiting on a terminal that takes no output.

    The settings come back at once and the restore sequence is given
    :data:`~otel_bpf.live.terminal.RESTORE_TIMEOUT`.  If the terminal takes nothing in that
    time (output stopped, a pane nobody reads), a helper process writes the rest once it
    does, and stderr, when it is that terminal, goes through the helper too: the log lines
    held during the view and those of the shutdown follow in order, and none blocks.
    """
    terminal.leave()
    rest = terminal.close()
    if rest:
        stderr_too = same_terminal(2, terminal.stdout_fd)
        log.debug("live view: the terminal takes no output; restoring it when it does")
        hand_off(rest, terminal.stdout_fd, stderr_too=stderr_too)
