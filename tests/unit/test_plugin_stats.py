"""When BpfMetricsPlugin holds kernel stats, with a synthetic source and a counting holder."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from fake_source import CallSource
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from otel_bpf.kernel.source import SourceOptions
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.otel.plugin import BpfMetricsPlugin
from otel_bpf.otel.sdk_private import reader_export_interval
from otel_bpf.records import ProgramRecord, StatsState
from otel_bpf.sampler import Sampler

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Holder:
    def __init__(self) -> None:
        self.count = 0
        self.events: list[str] = []

    def acquire(self) -> None:
        self.count += 1
        self.events.append("on")

    def release(self) -> None:
        self.count -= 1
        self.events.append("off")


@dataclass
class Result:
    records: list[ProgramRecord]
    errors: list[str] = field(default_factory=list)


def prog() -> ProgramRecord:
    return ProgramRecord(
        id=1,
        type="xdp",
        type_id=6,
        name="p",
        tag="00" * 8,
        run_time_ns=0,
        run_cnt=0,
        recursion_misses=0,
        load_time=1.0,
        uid=0,
        verified_insns=1,
        xlated_size=8,
        jited_size=8,
        map_ids=(),
        btf_id=0,
        memlock_bytes=None,
    )


def fake_sampler(holder: Holder) -> Sampler:
    return Sampler(
        interval=0.1,
        source=CallSource(lambda: Result([prog()])),
        stats_state=lambda: StatsState(ours=holder.count > 0, sysctl=False, others=False),
        online_cpus=lambda: 1,
    )


def stats_on_sampler(
    source: Any, *, interval: float, history: int, clock: Any = time.monotonic
) -> Sampler:
    """A sampler over ``source`` (a function returning a pass) on one CPU, stats on."""
    return Sampler(
        interval=interval,
        history=history,
        source=CallSource(source),
        stats_state=lambda: StatsState(ours=True, sysctl=False, others=False),
        online_cpus=lambda: 1,
        clock=clock,
    )


async def eventually(predicate: Any, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await anyio.sleep(0.02)
    return bool(predicate())


class NullExporter(MetricExporter):
    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def test_reader_export_interval_is_found_on_the_provider() -> None:
    periodic = PeriodicExportingMetricReader(NullExporter(), export_interval_millis=7_000)
    mp = MeterProvider(metric_readers=[InMemoryMetricReader(), periodic], shutdown_on_exit=False)
    assert reader_export_interval(mp) == 7.0
    mp.shutdown()
    alone = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    assert reader_export_interval(alone) is None
    alone.shutdown()


async def test_idle_threshold_learned_from_collection_gaps() -> None:
    holder = Holder()
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    sampler = fake_sampler(holder)
    plugin = BpfMetricsPlugin(mp, sampler=sampler, stats_holder=holder)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(sampler.run)
            async with plugin:
                assert holder.count == 1
                for _ in range(6):
                    reader.get_metrics_data()
                    last = time.monotonic()
                    await anyio.sleep(0.15)
                # Gaps of about 0.15 s were seen: three of them without a collection is idle.
                assert await eventually(lambda: holder.count == 0, within=10.0)
                idle = time.monotonic() - last
                # Three learned gaps (~0.45 s); more only if the machine stalled collections.
                assert 0.4 <= idle <= 6.0, idle
                reader.get_metrics_data()
                assert await eventually(lambda: holder.count == 1)
            tg.cancel_scope.cancel()
    assert holder.events == ["on", "off", "on", "off"]
    mp.shutdown()


async def test_a_provider_shut_down_before_start_never_gets_stats() -> None:
    holder = Holder()
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    mp.shutdown()
    sampler = fake_sampler(holder)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(sampler.run)
            async with BpfMetricsPlugin(mp, sampler=sampler, stats_holder=holder) as plugin:
                await anyio.sleep(0.3)
                assert not plugin.stats_held
            tg.cancel_scope.cancel()
    assert holder.events == []


async def test_a_plugin_runs_once_at_a_time_and_can_run_again() -> None:
    holder = Holder()
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    sampler = fake_sampler(holder)
    plugin = BpfMetricsPlugin(mp, sampler=sampler, stats_holder=holder)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(sampler.run)
            async with plugin:
                with pytest.raises(RuntimeError, match="already running"):
                    await plugin.run()
            assert reader.get_metrics_data() is None  # closed: nothing observed
            async with plugin:
                data = reader.get_metrics_data()
                assert data is not None
            tg.cancel_scope.cancel()
    assert holder.count == 0
    mp.shutdown()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="interval"):
        BpfMetricsPlugin(interval=0.01)
    with pytest.raises(ValueError, match="collection_interval"):
        BpfMetricsPlugin(collection_interval=0)
    with pytest.raises(ValueError, match="idle_collections"):
        BpfMetricsPlugin(idle_collections=0)


def test_per_cpu_metrics_need_a_sampler_that_reads_per_cpu_counters() -> None:
    # A given sampler that reads totals only would leave the per-CPU instruments silent.
    plain = fake_sampler(Holder())
    with pytest.raises(ValueError, match=r"per_cpu=True.*iterator"):
        BpfMetricsPlugin(options=MetricsOptions(per_cpu=True), sampler=plain)
    per_cpu = Sampler(
        source=CallSource(lambda: Result([prog()])), options=SourceOptions(per_cpu=True)
    )
    BpfMetricsPlugin(options=MetricsOptions(per_cpu=True), sampler=per_cpu)
    # Its own sampler is opened for per-CPU counters.
    assert BpfMetricsPlugin(options=MetricsOptions(per_cpu=True)).sampler.options.per_cpu
    assert not BpfMetricsPlugin().sampler.options.per_cpu


async def test_per_cpu_without_the_iterator_fails_at_start_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A kernel where the iterator path cannot be loaded: the own sampler's open_source("auto")
    # would fall back to the syscall path, which cannot read per-CPU counters.
    import errno

    from otel_bpf.kernel import open_source
    from otel_bpf.kernel.errors import BpfUnsupportedError
    from otel_bpf.kernel.iterator.selfcheck import IteratorUnavailableError

    def unavailable(*args: object, **kwargs: object) -> object:
        raise IteratorUnavailableError(errno.EINVAL, "no iter/bpf_prog on this kernel")

    monkeypatch.setattr(open_source, "open_iterator_source", unavailable)
    holder = Holder()
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    plugin = BpfMetricsPlugin(mp, options=MetricsOptions(per_cpu=True), stats_holder=holder)
    with pytest.raises(BpfUnsupportedError, match="iterator sampling path"):
        async with plugin:
            pass
    assert holder.count == 0
    mp.shutdown()


async def test_a_start_up_failure_is_raised_as_itself_and_holds_nothing() -> None:
    holder = Holder()

    def no_privileges() -> Result:
        raise PermissionError("needs CAP_SYS_ADMIN")

    mp = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    plugin = BpfMetricsPlugin(mp, stats_holder=holder)
    plugin._sampler = Sampler(
        source=CallSource(no_privileges),
        stats_state=lambda: StatsState(False, False, False),
        online_cpus=lambda: 1,
    )
    with anyio.fail_after(10), pytest.raises(PermissionError, match="CAP_SYS_ADMIN"):
        async with plugin:
            pass
    with anyio.fail_after(10), pytest.raises(PermissionError, match="CAP_SYS_ADMIN"):
        await plugin.run()
    assert holder.count == 0 and holder.events == ["on", "off", "on", "off"]
    mp.shutdown()


async def test_by_name_type_counts_programs_that_came_and_went_between_collections() -> None:
    """The plugin feeds every pass to its instruments: with a history of one snapshot, the
    runs of short-lived programs between two collections still reach the aggregate."""
    from dataclasses import replace

    from otel_bpf.otel.options import MetricsOptions

    passes = 0
    twelve_passes = anyio.Event()

    def source() -> Result:
        # One short-lived program per pass (new id, 10 runs), never two passes in a row.
        nonlocal passes
        passes += 1
        if passes == 12:
            anyio.from_thread.run_sync(twelve_passes.set)
        return Result([replace(prog(), id=100 + passes, run_cnt=10)])

    holder = Holder()
    sampler = stats_on_sampler(source, interval=0.1, history=1)
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    plugin = BpfMetricsPlugin(
        mp,
        sampler=sampler,
        options=MetricsOptions(attributes="by_name_type"),
        stats_holder=holder,
    )
    async with anyio.create_task_group() as tg:
        await tg.start(sampler.run)
        async with plugin:
            with anyio.fail_after(10):
                await twelve_passes.wait()
            await sampler.wait_next(sampler.latest.seq if sampler.latest else 0)
            data = reader.get_metrics_data()
            seen = sampler.latest
        tg.cancel_scope.cancel()
    assert data is not None and seen is not None
    runs = [
        p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "bpf.program.runs"
        for p in m.data.data_points
    ]
    # Every program of every pass up to the collection counted, not only the newest one.
    assert runs == [10 * seen.seq], (runs, seen.seq)
    mp.shutdown()


def test_each_plugin_makes_its_own_switch_unless_given_one() -> None:
    from otel_bpf.kernel.stats import StatsSwitch

    mp = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    first, second = BpfMetricsPlugin(mp), BpfMetricsPlugin(mp)
    assert isinstance(first._holder(), StatsSwitch)
    assert first._holder() is first._holder() and first._holder() is not second._holder()
    shared = StatsSwitch()
    assert BpfMetricsPlugin(mp, stats_holder=shared)._holder() is shared


class SlowHolder:
    """A (thread-safe) holder slow to switch, that notices a second acquire or release."""

    def __init__(self) -> None:
        import threading

        self.count = 0
        self.bad: list[int] = []
        self._lock = threading.Lock()

    def _add(self, n: int) -> None:
        with self._lock:
            self.count += n
            if self.count not in (0, 1):
                self.bad.append(self.count)

    def acquire(self) -> None:
        self._add(1)
        time.sleep(0.0002)  # the kernel call: other threads run meanwhile

    def release(self) -> None:
        self._add(-1)
        time.sleep(0.0002)


def test_acquire_and_release_from_many_threads_never_double_count() -> None:
    import threading

    holder = SlowHolder()
    mp = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    plugin = BpfMetricsPlugin(mp, stats_holder=holder)
    start = threading.Barrier(8)

    def churn() -> None:
        start.wait(10)
        for i in range(200):
            plugin._acquire() if i % 2 == 0 else plugin._release()

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    plugin._release()
    assert holder.bad == [] and holder.count == 0
    mp.shutdown()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def counting_sampler(clock: Clock) -> tuple[Sampler, list[int]]:
    """A sampler whose program has run as many times as there were reads (x 10)."""
    from dataclasses import replace

    reads: list[int] = []

    def source() -> Result:
        reads.append(len(reads) + 1)
        return Result([replace(prog(), run_cnt=10 * reads[-1], run_time_ns=1000 * reads[-1])])

    sampler = stats_on_sampler(source, interval=1.0, history=4, clock=clock)
    return sampler, reads


def exported_runs(reader: InMemoryMetricReader) -> list[float]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "bpf.program.runs"
        for p in m.data.data_points
    ]


async def test_counters_only_take_one_pass_per_collection_and_bound_a_storm() -> None:
    clock = Clock()
    sampler, reads = counting_sampler(clock)
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    plugin = BpfMetricsPlugin(mp, sampler=sampler, stats_holder=Holder(), sample_on_collection=True)
    with anyio.fail_after(10):
        async with plugin:
            assert plugin.samples_on_collection and not sampler.running
            assert sampler.passes == 1  # the start-up pass: privileges checked at start
            for n in range(2, 7):
                clock.now += 1.0
                # Each collection reads the kernel then, and exports what it read.
                assert exported_runs(reader) == [10 * n]
                assert sampler.passes == n == len(reads)
            # A scrape storm inside one interval: the newest pass, no kernel walk.
            for _ in range(200):
                clock.now += 0.004
                assert exported_runs(reader) == [60]
            assert sampler.passes == 6
            clock.now += 0.2
            assert exported_runs(reader) == [70]
            assert sampler.passes == 7
    # After the plugin stopped, a collection (the provider's final one) takes no pass.
    clock.now += 5
    reader.get_metrics_data()
    assert sampler.passes == 7
    mp.shutdown()


async def test_own_sampler_follows_collections_only_for_counters_per_program() -> None:
    from otel_bpf.otel.options import MetricsOptions

    mp = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    assert BpfMetricsPlugin(mp).samples_on_collection
    assert not BpfMetricsPlugin(
        mp, options=MetricsOptions(derived_gauges=True)
    ).samples_on_collection
    by_name = MetricsOptions(attributes="by_name_type")
    assert not BpfMetricsPlugin(mp, options=by_name).samples_on_collection
    clock = Clock()
    given, _ = counting_sampler(clock)
    assert not BpfMetricsPlugin(mp, sampler=given).samples_on_collection
    with pytest.raises(ValueError, match="sample_on_collection"):
        BpfMetricsPlugin(mp, options=by_name, sample_on_collection=True)
    mp.shutdown()


async def test_stats_back_on_at_a_collection_and_its_pass_has_no_period() -> None:
    clock = Clock()
    sampler, _ = counting_sampler(clock)
    holder = Holder()
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    plugin = BpfMetricsPlugin(
        mp,
        sampler=sampler,
        stats_holder=holder,
        sample_on_collection=True,
        collection_interval=0.1,
        idle_collections=1,
    )
    with anyio.fail_after(20):
        async with plugin:
            clock.now += 1.0
            reader.get_metrics_data()
            before = sampler.latest
            assert before is not None and before.elapsed is not None
            # No collection for longer than 1 x max(0.1 s, interval 1 s): stats go off.
            assert await eventually(lambda: holder.count == 0, within=10.0)
            clock.now += 1.0
            reader.get_metrics_data()
            # Back on within the collection itself, before its pass.
            assert holder.count == 1 and plugin.stats_held
            after = sampler.latest
            assert after is not None and after.seq == before.seq + 1
            (sample,) = after.programs
            assert after.elapsed is None and sample.events_per_sec is None
            clock.now += 1.0
            reader.get_metrics_data()
            latest = sampler.latest
            assert latest is not None and latest.elapsed is not None
    assert holder.events == ["on", "off", "on", "off"]
    mp.shutdown()
