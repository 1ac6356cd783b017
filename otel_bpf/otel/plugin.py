"""BPF program metrics for an application that already has a MeterProvider.

::

    async with BpfMetricsPlugin(meter_provider=provider):
        ...  # the application

or, inside the application's own task group, ``tg.start_soon(plugin.run)``.

Kernel run-time statistics cost every BPF program on the host some 20-40 ns per run, so the
plugin holds them on only while its numbers can go somewhere: from start (when the provider is
alive) until the plugin exits, the provider is shut down, or no reader has collected for
``idle_collections`` collection intervals; a collection after such a pause switches them back
on.  The stats holder is a refcounted switch: the plugin makes its own unless it is given one
(``stats_holder=``), which is how ``bpftop-otel`` makes its plugin, its ``--json`` writer and
its live view share one kernel fd.

With counters only (no derived gauges) and per-program series, nothing needs a pass between
two collections: the plugin's sampler then runs no loop, and each collection takes a pass on
the collecting thread (at most one per ``interval``; a collection sooner than that exports the
newest pass).  Derived gauges (figures over a period) and ``by_name_type`` series (whose
counters must see every program that came and went) keep a pass every ``interval``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from types import TracebackType
from typing import Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus
from opentelemetry import metrics
from opentelemetry.metrics import MeterProvider

from otel_bpf.kernel.source import SamplingPath
from otel_bpf.otel.instruments import BpfInstruments, create_instruments
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.otel.sdk_private import (
    call_after_shutdown,
    provider_is_shut_down,
    reader_export_interval,
    reader_exporting,
)
from otel_bpf.sampler import Sampler

__all__ = ["BpfMetricsPlugin", "StatsHolder"]

_log = logging.getLogger(__name__)

DEFAULT_COLLECTION_INTERVAL = 60.0
"""Assumed collection interval when no reader says and none was seen yet (the SDK's default
``OTEL_METRIC_EXPORT_INTERVAL``)."""


class StatsHolder(Protocol):
    """A refcounted holder of the kernel's run-time statistics."""

    def acquire(self) -> None: ...

    def release(self) -> None: ...


def new_stats_holder() -> StatsHolder:
    """A new :class:`otel_bpf.kernel.stats.StatsSwitch` (one fd of its own while held)."""
    from otel_bpf.kernel.stats import StatsSwitch

    holder: StatsHolder = StatsSwitch()
    return holder


SUPERVISOR_MIN_SLEEP = 1.0
"""The stats supervisor wakes at most once per this many seconds (at the idle deadline)."""


def passes_on_collection(options: MetricsOptions) -> bool:
    """Whether collections alone can drive the passes for ``options``: counters only (a
    figure over a period needs passes a known period apart) and per-program series (the
    ``by_name_type`` counters keep what an unloaded program counted, so they must see every
    program that comes and goes between two collections)."""
    return not options.derived_gauges and options.attributes == "per_program"


FED_HISTORY = 4
"""Snapshots a sampler needs to keep when the plugin feeds its instruments every pass: the
newest, plus a margin for passes published while the event loop was busy elsewhere."""


def _sole(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member exception groups, else ``exc``."""
    while True:
        inner = getattr(exc, "exceptions", None)
        if not isinstance(inner, tuple) or len(inner) != 1:
            return exc
        exc = inner[0]


class BpfMetricsPlugin:
    """Samples every BPF program and exports the metrics contract on a MeterProvider.

    ``meter_provider`` defaults to the global one.  ``interval`` is the sampling interval
    (0.1..3600 s) of the plugin's own sampler; pass ``sampler`` instead to share one that the
    caller runs (e.g. with a live view).  ``options`` chooses attributes, filters and opt-in
    metrics.  ``collection_interval`` is how often readers are expected to collect; by default
    the shortest periodic reader interval, else the longest gap seen between recent
    collections, else 60 s.  Stats go off after ``idle_collections`` such intervals without
    a collection.  ``stats_holder`` is the stats switch to hold (a
    :class:`otel_bpf.kernel.stats.StatsSwitch` shared with other users of the process, or
    any :class:`StatsHolder`); by default the plugin makes its own.  ``sample_on_collection``:
    take each pass when a reader collects (at most one per ``interval``) instead of running
    the sampler's loop; by default when the plugin owns its sampler and
    :func:`passes_on_collection` allows it.  A given ``sampler`` must then not be running.
    With ``options.per_cpu`` the own sampler reads per-CPU counters, which only the iterator
    sampling path can: where the kernel does not allow it, :meth:`run` raises
    :class:`otel_bpf.kernel.errors.BpfUnsupportedError` naming the iterator path; a given
    ``sampler`` must read them too (``SourceOptions(per_cpu=True)``), else ValueError.

    Errors at start (missing privileges: :class:`otel_bpf.kernel.errors.BpfPermissionError`)
    propagate from :meth:`run` / ``async with``.
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        interval: float = 1.0,
        options: MetricsOptions | None = None,
        sampler: Sampler | None = None,
        collection_interval: float | None = None,
        idle_collections: int = 3,
        stats_holder: StatsHolder | None = None,
        sample_on_collection: bool | None = None,
    ) -> None:
        self.options = options or MetricsOptions()
        self._own_sampler = sampler is None
        if sample_on_collection is None:
            sample_on_collection = sampler is None and passes_on_collection(self.options)
        elif sample_on_collection and not passes_on_collection(self.options):
            raise ValueError(
                "sample_on_collection needs counters only (no derived_gauges) and "
                "per_program attributes"
            )
        self._on_collection = sample_on_collection
        # The instruments are fed every pass as it is taken (see _feed_every_pass): the own
        # sampler keeps only a few snapshots, for a collection that overtakes the feeding.
        # An own sampler opens open_source("auto") at its first pass: the iterator path where
        # the kernel allows it, as the command line does.
        self._sampler = sampler or Sampler(
            interval=interval,
            history=FED_HISTORY,
            options=self.options.source_options,
        )
        if self.options.per_cpu and not self._sampler.options.per_cpu:
            # The per-CPU instruments would stay silent: say so now rather than export nothing.
            raise ValueError(
                "MetricsOptions(per_cpu=True) needs a sampler that reads per-CPU counters "
                "(SourceOptions(per_cpu=True), the iterator sampling path)"
            )
        if collection_interval is not None and not collection_interval > 0:
            raise ValueError("collection_interval must be > 0 seconds")
        if idle_collections < 1:
            raise ValueError("idle_collections must be >= 1")
        self._provider = meter_provider
        self._collection_interval = collection_interval
        self._idle_collections = idle_collections
        self._stats_holder = stats_holder
        self._held = False
        # _acquire/_release run on the event loop and on the SDK's collecting and shutdown
        # threads.
        self._lock = threading.RLock()
        self._instruments: BpfInstruments | None = None
        self._running = False
        self._tg: TaskGroup | None = None
        self._gaps: deque[float] = deque(maxlen=8)
        self._seen_collection: float | None = None
        self._idle_since_ref = 0.0
        self._released_for_idle_at: float | None = None
        self._last_seen_exporting = 0.0
        self._pass_failing = False

    # -- public state --------------------------------------------------------------------

    @property
    def sampler(self) -> Sampler:
        """The sampler whose snapshots are exported."""
        return self._sampler

    @property
    def sampling_path(self) -> SamplingPath | None:
        """The path the sampler reads programs through (None before the first pass)."""
        return self._sampler.sampling_path

    @property
    def instruments(self) -> BpfInstruments | None:
        """The instruments (None before the first start)."""
        return self._instruments

    @property
    def samples_on_collection(self) -> bool:
        """Passes are taken by collections, not by a sampler loop."""
        return self._on_collection

    @property
    def stats_held(self) -> bool:
        """This plugin currently holds the kernel's run-time statistics on."""
        return self._held

    @property
    def meter_provider(self) -> MeterProvider:
        """The provider the metrics are exported on."""
        return self._provider or metrics.get_meter_provider()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> BpfMetricsPlugin:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self.run)
        except BaseException as exc:
            try:
                await tg.__aexit__(type(exc), exc, exc.__traceback__)
            except BaseException as grouped:
                raise _sole(grouped) from None
            raise _sole(exc) from None
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None
        tg.cancel_scope.cancel()
        return await tg.__aexit__(exc_type, exc, tb)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Sample and export until cancelled; ``task_status.started()`` once exporting."""
        if self._running:
            raise RuntimeError("this BpfMetricsPlugin is already running")
        self._running = True
        provider = self.meter_provider
        started = False
        try:
            async with anyio.create_task_group() as tg:
                if not provider_is_shut_down(provider):
                    self._acquire()
                # The provider's readers may not collect at its shutdown (Prometheus): stats
                # go off when shutdown() runs, not at the supervisor's next look.
                call_after_shutdown(provider, self._on_provider_shutdown)
                if self._on_collection:
                    if self._own_sampler or self._sampler.latest is None:
                        # The first pass here: a missing privilege shows at start.
                        await anyio.to_thread.run_sync(self._sampler.sample_once)
                elif self._own_sampler:
                    await tg.start(self._sampler.run)
                if self._instruments is None:
                    self._instruments = create_instruments(
                        provider,
                        lambda: self._sampler.history,
                        self.options,
                        before_collect=lambda: self._collecting(provider),
                    )
                else:
                    self._instruments.reopen()
                if not self._on_collection:
                    tg.start_soon(self._feed_every_pass, self._instruments)
                _log.info("BPF program metrics: sampling path %s", self.sampling_path)
                self._idle_since_ref = time.monotonic()
                self._seen_collection = self._instruments.last_collection
                task_status.started()
                started = True
                await self._supervise(provider, self._instruments)
        except BaseException as exc:
            if started:
                raise
            # A start-up failure (no privileges) reads better as itself than as a group.
            raise _sole(exc) from None
        finally:
            # Synchronous on purpose: nothing here can be interrupted by cancellation.
            if self._instruments is not None:
                self._instruments.close()
            self._release()
            if self._own_sampler:
                self._sampler.close()
            self._running = False

    async def _feed_every_pass(self, instruments: BpfInstruments) -> None:
        # by_name_type series must see every program that came and went between two
        # collections, which reading the sampler's history at collection time only does
        # when the history spans a whole collection interval (120 snapshots of 1,000 busy
        # programs hold about 50 MB).
        with self._sampler.subscribe() as passes:
            # A sampler started before this task already took a pass the subscription
            # will not return.
            latest = self._sampler.latest
            if latest is not None:
                instruments.feed(latest)
            async for snapshot in passes:
                instruments.feed(snapshot)

    # -- stats holding -------------------------------------------------------------------

    def _holder(self) -> StatsHolder:
        if self._stats_holder is None:
            self._stats_holder = new_stats_holder()
        return self._stats_holder

    def _acquire(self) -> None:
        with self._lock:
            if not self._held:
                self._holder().acquire()
                self._held = True

    def _release(self) -> None:
        with self._lock:
            if self._held:
                self._held = False
                self._holder().release()

    def _on_provider_shutdown(self) -> None:
        with self._lock:
            if self._held:
                _log.info("meter provider shut down: BPF run-time statistics off")
                self._release()

    def _collecting(self, provider: object) -> None:
        """At the start of each collection, on the collecting thread."""
        now = time.monotonic()
        with self._lock:
            if self._seen_collection is not None:
                self._gaps.append(now - self._seen_collection)
            self._seen_collection = now
            if (
                not self._held
                and self._released_for_idle_at is not None
                and not provider_is_shut_down(provider)
            ):
                try:
                    self._acquire()
                except OSError as exc:
                    _log.warning("cannot switch BPF run-time statistics back on: %s", exc)
                else:
                    self._released_for_idle_at = None
                    # The counters stood still while stats were off: no figure over that
                    # period (the next pass is like a first reading for the rates).
                    self._sampler.restart_period()
                    _log.info("metrics collection resumed: BPF run-time statistics on")
        if self._on_collection:
            try:
                snapshot = self._sampler.sample_fresh()
            except Exception as exc:  # export the last pass; the instruments log a burst once
                if not self._pass_failing:
                    self._pass_failing = True
                    _log.warning("sampling BPF programs failed (will keep trying): %s", exc)
            else:
                _log.debug(
                    "collection: pass %d exported (%d passes so far)",
                    snapshot.seq,
                    self._sampler.passes,
                )
                if self._pass_failing:
                    self._pass_failing = False
                    _log.warning("sampling BPF programs works again")

    def _expected_collection_interval(self, provider: object) -> float:
        if self._collection_interval is not None:
            return self._collection_interval
        periodic = reader_export_interval(provider)
        if periodic is not None:
            return periodic
        if self._gaps:
            return max(self._gaps)
        return DEFAULT_COLLECTION_INTERVAL

    async def _supervise(self, provider: object, instruments: BpfInstruments) -> None:
        """Switch stats off after ``idle_collections`` intervals without a collection.

        Wakes at the idle deadline, at most once per :data:`SUPERVISOR_MIN_SLEEP` (once per
        second while the collection interval is learnt from the gaps between collections, as
        it may shrink): collections record themselves and switch stats back on from the collecting
        thread (:meth:`_collecting`), the provider's shutdown from its own hook.
        """
        while True:
            idle_after = self._idle_collections * max(
                self._expected_collection_interval(provider), self._sampler.interval
            )
            if provider_is_shut_down(provider):
                self._on_provider_shutdown()
                await anyio.sleep_forever()
            if not self._held:
                # Off for idleness: the next collection switches stats back on by itself.
                await anyio.sleep(max(idle_after, SUPERVISOR_MIN_SLEEP))
                continue
            now = time.monotonic()
            if reader_exporting(provider):
                # A reader stuck in an export to a collector that does not answer is still a
                # reader: its next collection comes when the export gives up.
                self._last_seen_exporting = now
                await anyio.sleep(SUPERVISOR_MIN_SLEEP)
                continue
            # Idle is counted from the end of the last collection, as far as it is seen:
            # its start, or the last moment a reader was seen exporting what it collected.
            ref = max(
                instruments.last_collection or 0.0,
                self._idle_since_ref,
                self._last_seen_exporting,
            )
            if now - ref <= idle_after:
                wait = ref + idle_after - now
                if self._collection_interval is None and reader_export_interval(provider) is None:
                    # The interval is learnt from collection gaps and may shrink with the
                    # next collection: look again in a second rather than at the deadline.
                    wait = min(wait, SUPERVISOR_MIN_SLEEP)
                await anyio.sleep(max(wait, SUPERVISOR_MIN_SLEEP))
                continue
            with self._lock:
                last = instruments.last_collection
                if not self._held or (last is not None and now - last <= idle_after):
                    continue  # a collection came meanwhile
                _log.info(
                    "no metrics collection for %.1f s: BPF run-time statistics off until the next",
                    now - ref,
                )
                self._release()
                self._released_for_idle_at = now
