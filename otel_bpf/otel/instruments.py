"""The observable instruments of the metrics contract, fed from the sampler's snapshots.

The SDK calls the callbacks on its own export thread (``PeriodicExportingMetricReader``'s
ticker, a Prometheus scrape, ``InMemoryMetricReader.get_metrics_data()``), possibly after the
sampler stopped (the provider's final collection at shutdown).  So a callback only reads the
snapshots already taken, never calls the kernel and never awaits; the points of one snapshot
are built once and shared by every callback of a collection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from otel_bpf.otel import names
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.otel.series import Frame, SeriesTable
from otel_bpf.otel.stale_series import ObservedSeries, StaleSeriesPruner
from otel_bpf.snapshot import Snapshot

_log = logging.getLogger(__name__)

SnapshotsSource = Callable[[], Sequence[Snapshot]]
"""Returns the recent snapshots, oldest first (e.g. ``lambda: sampler.history``)."""


def enabled_metrics(options: MetricsOptions) -> tuple[names.MetricName, ...]:
    """The metrics exported under ``options`` (the contract's always-on ones plus opt-ins)."""
    chosen = list(names.ALWAYS)
    for flag, metric in (
        (options.derived_gauges, names.RUN_TIME_AVERAGE),
        (options.derived_gauges, names.RUN_RATE),
        (options.derived_gauges, names.CPU_UTILIZATION),
        (options.memory, names.MEMORY_USAGE),
        (options.code_size, names.CODE_SIZE),
        (options.verifier_instructions, names.VERIFIER_INSTRUCTIONS),
        (options.map_memory, names.MAP_MEMORY_USAGE),
        (options.owner_series, names.PROGRAM_OWNER),
        (options.attachment_series, names.PROGRAM_ATTACHMENT),
        (options.per_cpu, names.CPU_RUN_TIME),
        (options.per_cpu, names.CPU_RUNS),
        (options.per_cpu, names.CPU_RECURSION_MISSES),
    ):
        if flag:
            chosen.append(metric)
    return tuple(chosen)


class _Route:
    """The callback the SDK holds for one instrument; it calls the instrument's current owner."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.owner: BpfInstruments | None = None
        self.instrument: object = None

    def __call__(self, options: CallbackOptions) -> Iterable[Observation]:
        owner = self.owner
        return owner._observe(self.metric, self.instrument) if owner is not None else []


_ROUTE_ATTRIBUTE = "_otel_bpf_route"
"""Where an instrument keeps its route, so a later BpfInstruments on the same meter takes it
over.  Kept on the instrument itself: the route lives exactly as long as the instrument."""
_routes_lock = threading.Lock()
_NOTHING = ObservedSeries(())


class BpfInstruments:
    """Creates the instruments on ``meter`` and observes the newest snapshot.

    ``snapshots`` returns the recent snapshots, oldest first; all of them are accounted (the
    ``by_name_type`` offsets need every program's last totals), the newest one is exported.
    ``before_collect``, when given, runs at the start of each collection on the collecting
    thread and may take a fresh snapshot (the instrumentor's no-event-loop path).
    ``meter_provider``, when it is the SDK's, lets the instruments release the SDK's state of
    series that stopped being observed (see :mod:`otel_bpf.otel.stale_series`).

    Instruments cannot be removed from a meter; :meth:`close` makes their callbacks observe
    nothing from then on (and releases their series).  A meter returns the instrument it
    already has for a name, so a later ``BpfInstruments`` on the same meter takes the
    instruments over: one active ``BpfInstruments`` per meter provider.
    """

    def __init__(
        self,
        meter: Meter,
        snapshots: SnapshotsSource,
        options: MetricsOptions | None = None,
        *,
        meter_provider: MeterProvider | None = None,
        before_collect: Callable[[], None] | None = None,
    ) -> None:
        self.options = options or MetricsOptions()
        self._snapshots = snapshots
        self._before_collect = before_collect
        self._table = SeriesTable(self.options)
        self._lock = threading.Lock()
        self._closed = False
        self._observed: dict[str, tuple[list[Observation], ObservedSeries]] = {}
        self._observed_seq = -1
        self._key_hashes: dict[int, int] = {}
        self._collections = 0
        self._last_collection: float | None = None
        self._failing = False
        self._pruner = StaleSeriesPruner(meter_provider) if meter_provider is not None else None
        self.metrics = enabled_metrics(self.options)
        self._instruments: dict[str, object] = {}
        # The first instrument's callback starts each collection (the SDK calls callbacks in
        # registration order).
        self._first = self.metrics[0].name
        for metric in self.metrics:
            self._instruments[metric.name] = self._create(meter, metric)

    # -- state read by the plugin ----------------------------------------------------------

    @property
    def collections(self) -> int:
        """How many collections have run the callbacks."""
        return self._collections

    @property
    def last_collection(self) -> float | None:
        """``time.monotonic()`` of the last collection, or None before the first."""
        return self._last_collection

    @property
    def pruner(self) -> StaleSeriesPruner | None:
        """The SDK state releaser (None without a meter provider)."""
        return self._pruner

    @property
    def closed(self) -> bool:
        """:meth:`close` was called: the callbacks observe nothing."""
        return self._closed

    def close(self) -> None:
        """Observe nothing from now on (instruments stay registered: the API cannot remove them)."""
        self._closed = True

    def reopen(self) -> None:
        """Observe again after :meth:`close`."""
        self._closed = False

    def feed(self, snapshot: Snapshot) -> None:
        """Account for ``snapshot`` as soon as it is taken (the plugin calls this for every
        pass), so the sampler need not keep a history as long as a collection interval."""
        with self._lock:
            self._table.feed(snapshot)

    def frame(self) -> Frame:
        """The points for the newest snapshot (built once per snapshot, thread-safe)."""
        with self._lock:
            self._table.feed_all(list(self._snapshots()))
            return self._table.frame()

    def observed(self, metric: str) -> tuple[list[Observation], ObservedSeries]:
        """The observations of ``metric`` for the newest snapshot and the attribute sets they
        carry: built once per snapshot and metric, shared by every collection until the next
        pass (several readers, or scrapes sooner than the sampler's interval)."""
        frame = self.frame()
        with self._lock:
            if frame.seq != self._observed_seq:
                self._observed = {}
                self._key_hashes = {}
                self._observed_seq = frame.seq
            found = self._observed.get(metric)
            if found is None:
                points = frame.get(metric)
                found = (
                    [Observation(v, a) for v, a in points],
                    ObservedSeries([a for _, a in points], self._key_hashes),
                )
                self._observed[metric] = found
            return found

    # -- callbacks ---------------------------------------------------------------------

    def _create(self, meter: Meter, metric: names.MetricName) -> object:
        route = _Route(metric.name)
        create = {
            "counter": meter.create_observable_counter,
            "updowncounter": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }[metric.kind]
        instrument = create(
            metric.name, callbacks=[route], unit=metric.unit, description=metric.description
        )
        with _routes_lock:
            # A meter hands back the instrument it already has under this name, with the
            # callbacks of its first registration: point those at this object instead.
            existing = getattr(instrument, _ROUTE_ATTRIBUTE, None)
            if isinstance(existing, _Route):
                route = existing
            else:
                # An instrument that takes no attributes is never shared anyway.
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(instrument, _ROUTE_ATTRIBUTE, route)
            route.instrument = instrument
            route.owner = self
        return instrument

    def _observe(self, metric: str, instrument: object) -> list[Observation]:
        try:
            if metric == self._first:
                self._start_collection()
            observations: list[Observation]
            if self._closed:
                observations, series = [], _NOTHING
            else:
                observations, series = self.observed(metric)
            if self._pruner is not None and instrument is not None:
                self._pruner.prune(instrument, series)
            if self._failing:
                self._failing = False
                _log.warning("BPF metrics callbacks work again")
            return observations
        except Exception:
            # The SDK would log a traceback on every collection; one per failure burst is enough.
            if not self._failing:
                self._failing = True
                _log.exception("BPF metrics callback for %s failed", metric)
            return []

    def _start_collection(self) -> None:
        self._collections += 1
        self._last_collection = time.monotonic()
        if self._before_collect is not None and not self._closed:
            self._before_collect()


def create_instruments(
    meter_provider: MeterProvider,
    snapshots: SnapshotsSource,
    options: MetricsOptions | None = None,
    *,
    before_collect: Callable[[], None] | None = None,
) -> BpfInstruments:
    """:class:`BpfInstruments` on ``meter_provider``'s ``otel_bpf`` meter."""
    from otel_bpf import __version__

    meter = meter_provider.get_meter(names.METER_NAME, __version__)
    return BpfInstruments(
        meter,
        snapshots,
        options,
        meter_provider=meter_provider,
        before_collect=before_collect,
    )
