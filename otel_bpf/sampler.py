"""The sampler: one pass over the kernel's programs per tick, published as a Snapshot.

Each pass runs in a worker thread (the ``bpf()`` calls are short but there are about three per
program) behind a dedicated one-token limiter, so two passes never overlap and the shared
thread pool is untouched.  Elapsed time comes from the monotonic clock read where each pass
read the counters (the source's ``ReadResult.read_at``).  Consumers read
:attr:`Sampler.latest` (any thread) or subscribe for each new snapshot; a slow subscriber
skips to the newest one, it never builds a backlog.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from otel_bpf.broadcast import Broadcast, Subscription
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.records import StatsState
from otel_bpf.snapshot import Snapshot, build_snapshot

if TYPE_CHECKING:
    from otel_bpf.kernel.source import ProgramSource, SamplingPath

__all__ = [
    "DEFAULT_HISTORY",
    "MAX_INTERVAL",
    "MIN_HISTORY",
    "MIN_INTERVAL",
    "Sampler",
    "validate_interval",
]

_log = logging.getLogger(__name__)

MIN_INTERVAL = 0.1
MAX_INTERVAL = 3600.0
DEFAULT_HISTORY = 120
"""Snapshots kept by default: the live view's charts span them."""
MIN_HISTORY = 1


def validate_interval(interval: float) -> float:
    """``interval`` as a float when it is a number of seconds in 0.1..3600, else ValueError."""
    try:
        value = float(interval)
    except (TypeError, ValueError):
        raise ValueError(f"interval must be a number of seconds, got {interval!r}") from None
    if not math.isfinite(value) or not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise ValueError(
            f"interval must be between {MIN_INTERVAL:g} and {MAX_INTERVAL:g} seconds, "
            f"got {interval!r}"
        )
    return value


class Sampler:
    """Samples every BPF program on the host at a fixed interval.

    ``source`` is the program source each pass reads (the caller keeps and closes it); by
    default the sampler opens ``open_source("auto", options)`` at its first pass and closes
    it with :meth:`close`.  ``stats_state`` and ``online_cpus`` replace the kernel's stats
    state and CPU count (for tests).  Sources and both callables are used inside the worker
    thread of a pass, never on the event loop.  ``clock`` gives the monotonic seconds
    stamped on a snapshot whose source does not say when it read the counters
    (``ReadResult.read_at``); elapsed time and rates follow from them.  It is
    ``time.monotonic`` unless a test drives time itself (e.g. with trio's ``MockClock``,
    which also drives the schedule through ``anyio.current_time``).
    """

    def __init__(
        self,
        *,
        interval: float = 1.0,
        history: int = DEFAULT_HISTORY,
        source: ProgramSource | None = None,
        options: SourceOptions | None = None,
        stats_state: Callable[[], StatsState] | None = None,
        online_cpus: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = validate_interval(interval)
        if isinstance(history, bool) or not isinstance(history, int) or history < MIN_HISTORY:
            raise ValueError(f"history must be an integer >= {MIN_HISTORY}, got {history!r}")
        self._history: deque[Snapshot] = deque(maxlen=history)
        self._source = source
        self._own_source = source is None
        self.options = options or (source.options if source is not None else SourceOptions())
        """What each pass reads (the live view asks for owners and maps while it shows)."""
        self._stats_state = stats_state
        self._online_cpus = online_cpus
        self._clock = clock
        self._broadcast: Broadcast[Snapshot] = Broadcast()
        # Serialises passes across threads: the event-loop path already uses a one-token
        # limiter, this also covers sample_once() called from a metrics collection thread.
        self._pass_lock = threading.Lock()
        self._running = False
        self._refresh: anyio.Event | None = None
        self._refresh_requested = False
        self._failures = 0
        self._passes = 0
        self._last_pass_at: float | None = None
        self._fresh_period = False
        self._closed = False

    # -- public state ------------------------------------------------------------------

    @property
    def interval(self) -> float:
        """Seconds between passes."""
        return self._interval

    @property
    def sampling_path(self) -> SamplingPath | None:
        """The path passes read through; None while an own source is not yet opened."""
        return self._source.path if self._source is not None else None

    @property
    def passes(self) -> int:
        """Passes taken so far (all paths: the loop, :meth:`sample_once`, :meth:`sample_fresh`)."""
        return self._passes

    def close(self) -> None:
        """Close the source this sampler opened itself (a given one is the caller's).

        Waits for a pass in progress on another thread; :meth:`sample_fresh` takes no pass
        after this (it returns the newest snapshot) until :meth:`run` or :meth:`sample_once`
        starts sampling again.
        """
        with self._pass_lock:
            self._closed = True
            if self._own_source and self._source is not None:
                source, self._source = self._source, None
                source.close()

    def restart_period(self) -> None:
        """Give the next pass no period: it reports no rates, as on a first reading.

        For a pause in counting (the kernel's stats were off for a while): the counters froze
        while the clock ran, so figures over the period would be too low."""
        self._fresh_period = True

    @property
    def latest(self) -> Snapshot | None:
        """The newest snapshot, or None before the first pass (safe from any thread)."""
        return self._broadcast.latest

    @property
    def history(self) -> tuple[Snapshot, ...]:
        """The most recent snapshots, oldest first, at most ``history`` of them."""
        return tuple(self._history)

    @property
    def running(self) -> bool:
        """:meth:`run` is looping."""
        return self._running

    def subscribe(self) -> Subscription[Snapshot]:
        """Each new snapshot, newest-only: ``with sampler.subscribe() as s: async for ...``."""
        return self._broadcast.subscribe()

    async def wait_next(self, after_seq: int) -> Snapshot:
        """The first snapshot whose ``seq`` is greater than ``after_seq`` (waits for it)."""
        latest = self.latest
        while latest is None or latest.seq <= after_seq:
            _, latest = await self._broadcast.wait_newer(self._broadcast.version)
        return latest

    def request_refresh(self) -> None:
        """Ask the running loop for a pass now (call from the sampler's event loop)."""
        self._refresh_requested = True
        if self._refresh is not None:
            self._refresh.set()

    # -- passes ------------------------------------------------------------------------

    def sample_once(self) -> Snapshot:
        """Run one pass in the calling thread, record it in the history and return it.

        For callers without an event loop (the ``opentelemetry-instrument`` path).  Async
        subscribers are not woken by it; they only follow :meth:`run`.
        """
        with self._pass_lock:
            self._closed = False
            snapshot = self._pass_locked()
            self._history.append(snapshot)
            self._broadcast.store(snapshot)
            return snapshot

    def sample_fresh(self, max_age: float | None = None) -> Snapshot:
        """The newest snapshot if its pass started less than ``max_age`` seconds ago (default:
        the interval), else a new pass in the calling thread, recorded like :meth:`sample_once`.

        For passes driven by metric collections instead of :meth:`run`'s ticks: however often
        readers collect (a scrape storm), the kernel is walked at most once per ``max_age``.
        Passes are serialised, so a caller that waited for another caller's pass takes that
        one.  After :meth:`close` it takes no pass and returns the newest snapshot.
        """
        bound = self._interval if max_age is None else max_age
        with self._pass_lock:
            latest = self.latest
            if latest is not None and (
                self._closed
                or (self._last_pass_at is not None and self._clock() - self._last_pass_at < bound)
            ):
                return latest
            if self._closed:
                raise RuntimeError("this Sampler is closed")
            snapshot = self._pass_locked()
            self._history.append(snapshot)
            self._broadcast.store(snapshot)
            return snapshot

    def _pass(self) -> Snapshot:
        with self._pass_lock:
            self._closed = False
            return self._pass_locked()

    def _pass_locked(self) -> Snapshot:
        prev = self.latest
        self._last_pass_at = self._clock()
        self._passes += 1
        source = self._open_source()
        result = source.read(self.options)
        stats = self._read_stats()
        cpus = self._read_cpus()
        fresh, self._fresh_period = self._fresh_period, False
        return build_snapshot(
            prev,
            result.records,
            # Where the counters were read: the rates' period must not include the pass's
            # later work, or a pass slowed after its reads (a busy CPU, the GIL) shortens the
            # next period and inflates rates and CPU shares.
            monotonic=self._clock() if result.read_at is None else result.read_at,
            wall_time=time.time(),
            online_cpus=cpus,
            stats=stats,
            sampling_path=source.path,
            errors=tuple(result.errors),
            fresh_period=fresh,
        )

    def _open_source(self) -> ProgramSource:
        if self._source is None:
            from otel_bpf.kernel.open_source import open_source

            self._source = open_source("auto", self.options)
        return self._source

    def _read_stats(self) -> StatsState:
        if self._stats_state is not None:
            return self._stats_state()
        from otel_bpf.kernel.stats import stats_state

        return stats_state()

    def _read_cpus(self) -> int:
        if self._online_cpus is not None:
            return self._online_cpus()
        from otel_bpf.kernel.system import online_cpus

        return online_cpus()

    # -- the loop ----------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sample until cancelled; ``task_status.started()`` after the first snapshot.

        The first pass's errors propagate (a missing privilege shows at once); later failed
        passes are logged once per burst and sampling goes on with the previous snapshot.
        The schedule does not drift: tick ``n`` is due at ``start + n * interval``, and a pass
        that overruns skips the ticks it missed instead of bursting to catch up.
        """
        if self._running:
            raise RuntimeError("this Sampler is already running")
        self._running = True
        limiter = anyio.CapacityLimiter(1)
        self._refresh = anyio.Event()
        try:
            await self._publish_pass(limiter, first=True)
            task_status.started()
            next_t = anyio.current_time() + self._interval
            while True:
                early = await self._sleep_until(next_t)
                await self._publish_pass(limiter, first=False)
                if early:
                    continue  # a refresh pass leaves the regular schedule as it was
                next_t += self._interval
                now = anyio.current_time()
                if next_t <= now:
                    missed = math.floor((now - next_t) / self._interval) + 1
                    next_t += missed * self._interval
        finally:
            self._running = False
            self._refresh = None
            self._broadcast.close()

    async def _sleep_until(self, deadline: float) -> bool:
        """Sleep until ``deadline``; True when woken early by :meth:`request_refresh`."""
        while anyio.current_time() < deadline:
            if self._refresh_requested:
                self._refresh_requested = False
                self._refresh = anyio.Event()
                return True
            refresh = self._refresh
            assert refresh is not None
            with anyio.CancelScope(deadline=deadline):
                await refresh.wait()
        # A refresh requested just as the regular tick came is satisfied by that tick.
        self._refresh_requested = False
        self._refresh = anyio.Event()
        return False

    async def _publish_pass(self, limiter: anyio.CapacityLimiter, *, first: bool) -> None:
        try:
            snapshot = await anyio.to_thread.run_sync(self._pass, limiter=limiter)
        except Exception as exc:
            if first:
                raise
            if self._failures == 0:
                _log.warning("sampling BPF programs failed (will keep trying): %s", exc)
            self._failures += 1
            return
        if self._failures:
            _log.warning("sampling BPF programs works again after %d failed passes", self._failures)
            self._failures = 0
        self._history.append(snapshot)
        self._broadcast.publish(snapshot)
