"""The instruments against synthetic snapshots, read through a real SDK InMemoryMetricReader."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import pytest
from opentelemetry.sdk.metrics import (
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    InMemoryMetricReader,
    Sum,
)
from opentelemetry.sdk.metrics.view import View

from otel_bpf.otel import names
from otel_bpf.otel.instruments import BpfInstruments, create_instruments
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.otel.series import SeriesTable
from otel_bpf.records import CpuCounters, MapRecord, Owner, ProgramRecord, StatsState, Workload
from otel_bpf.snapshot import Snapshot, build_snapshot

ON = StatsState(ours=True, sysctl=False, others=False)
OFF = StatsState(ours=False, sysctl=False, others=False)


def prog(
    pid: int,
    *,
    name: str | None = None,
    type: str = "socket_filter",
    run_cnt: int = 0,
    run_time_ns: int = 0,
    misses: int | None = 0,
    owners: tuple[Owner, ...] | None = None,
    maps: tuple[MapRecord, ...] | None = None,
) -> ProgramRecord:
    return ProgramRecord(
        id=pid,
        type=type,
        type_id=1,
        name=f"p{pid}" if name is None else name,
        tag=f"{pid:016x}",
        run_time_ns=run_time_ns,
        run_cnt=run_cnt,
        recursion_misses=misses,
        load_time=1000.0 + pid,
        uid=0,
        verified_insns=10 + pid,
        xlated_size=16,
        jited_size=40 + pid,
        map_ids=tuple(m.id for m in maps or ()),
        btf_id=0,
        memlock_bytes=4096,
        owners=owners,
        maps=maps,
    )


class Feed:
    """Snapshots built from successive lists of records, one second apart, 4 CPUs."""

    def __init__(self) -> None:
        self.snaps: list[Snapshot] = []

    def push(self, records: Iterable[ProgramRecord], stats: StatsState = ON) -> Snapshot:
        prev = self.snaps[-1] if self.snaps else None
        t = float(len(self.snaps))
        snap = build_snapshot(
            prev, list(records), monotonic=t, wall_time=1e9 + t, online_cpus=4, stats=stats
        )
        self.snaps.append(snap)
        del self.snaps[:-120]
        return snap

    def __call__(self) -> list[Snapshot]:
        return self.snaps


def setup(
    options: MetricsOptions | None = None, **reader_kw: Any
) -> tuple[Feed, InMemoryMetricReader, MeterProvider, BpfInstruments]:
    feed = Feed()
    reader = InMemoryMetricReader(**reader_kw)
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    inst = create_instruments(mp, feed, options)
    return feed, reader, mp, inst


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    out: dict[str, Any] = {}
    if data is None:
        return out
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == names.METER_NAME
            for m in sm.metrics:
                out[m.name] = m
    return out


def points(metric: Any) -> dict[tuple[tuple[str, Any], ...], float]:
    return {tuple(sorted(p.attributes.items())): p.value for p in metric.data.data_points}


def attrs(pid: int, name: str | None = None, type: str = "socket_filter") -> tuple[Any, ...]:
    return tuple(
        sorted(
            {
                names.PROGRAM_ID: pid,
                names.PROGRAM_NAME: name or f"p{pid}",
                names.PROGRAM_TYPE: type,
            }.items()
        )
    )


def test_contract_names_units_and_kinds() -> None:
    feed, reader, mp, _ = setup(MetricsOptions(derived_gauges=True))
    feed.push([prog(1, type="kprobe", run_cnt=10, run_time_ns=1000)])
    feed.push([prog(1, type="kprobe", run_cnt=30, run_time_ns=5000)])
    got = collect(reader)
    expected = {
        "bpf.program.run.time": ("s", Sum, True),
        "bpf.program.runs": ("{run}", Sum, True),
        "bpf.program.recursion.misses": ("{miss}", Sum, True),
        "bpf.program.run.time.average": ("s", Gauge, None),
        "bpf.program.run.rate": ("{run}/s", Gauge, None),
        "bpf.program.cpu.utilization": ("1", Gauge, None),
        "bpf.program.count": ("{program}", Sum, False),
        "bpf.stats.enabled": ("1", Gauge, None),
    }
    assert set(got) == set(expected)
    for name, (unit, kind, monotonic) in expected.items():
        m = got[name]
        assert m.unit == unit, name
        assert isinstance(m.data, kind), name
        assert m.description, name
        if kind is Sum:
            assert m.data.is_monotonic is monotonic, name
            assert m.data.aggregation_temporality is AggregationTemporality.CUMULATIVE
    mp.shutdown()


def test_default_set_is_the_counters() -> None:
    feed, reader, mp, inst = setup()
    assert [m.name for m in inst.metrics] == [m.name for m in names.ALWAYS]
    feed.push([prog(1, run_cnt=10, run_time_ns=1000), prog(2, type="tracing")])
    feed.push([prog(1, run_cnt=30, run_time_ns=5000), prog(2, type="tracing", misses=3)])
    got = collect(reader)
    assert set(got) == {
        "bpf.program.run.time",
        "bpf.program.runs",
        "bpf.program.recursion.misses",
        "bpf.program.count",
        "bpf.stats.enabled",
    }
    assert points(got["bpf.program.runs"]) == {attrs(1): 30, attrs(2, type="tracing"): 0}
    assert points(got["bpf.program.recursion.misses"]) == {attrs(2, type="tracing"): 3}
    mp.shutdown()


def test_values_and_attributes_per_program() -> None:
    feed, reader, mp, _ = setup(MetricsOptions(derived_gauges=True))
    feed.push([prog(1, run_cnt=10, run_time_ns=1000), prog(2, type="xdp", misses=None)])
    first = collect(reader)
    assert points(first["bpf.program.runs"]) == {attrs(1): 10, attrs(2, type="xdp"): 0}
    assert points(first["bpf.program.run.time"])[attrs(1)] == pytest.approx(1e-6)
    # Neither a socket filter nor an XDP program can miss a run: no series of zeros.
    assert "bpf.program.recursion.misses" not in first
    # First sample of a program: the gauges have no value, so nothing is observed.
    for gauge in ("run.time.average", "run.rate", "cpu.utilization"):
        assert f"bpf.program.{gauge}" not in first
    assert points(first["bpf.program.count"]) == {
        ((names.PROGRAM_TYPE, "socket_filter"),): 1,
        ((names.PROGRAM_TYPE, "xdp"),): 1,
    }
    assert points(first["bpf.stats.enabled"]) == {(): 1}

    feed.push(
        [prog(1, run_cnt=110, run_time_ns=51000), prog(2, type="xdp", misses=None)], stats=OFF
    )
    second = collect(reader)
    assert points(second["bpf.program.runs"])[attrs(1)] == 110
    assert points(second["bpf.program.run.rate"]) == {attrs(1): 100.0, attrs(2, type="xdp"): 0.0}
    # 50 us over 100 runs = 500 ns per run; 50 us in 1 s on 4 CPUs.
    assert points(second["bpf.program.run.time.average"]) == {attrs(1): pytest.approx(500e-9)}
    assert points(second["bpf.program.cpu.utilization"])[attrs(1)] == pytest.approx(50e-6 / 4)
    assert points(second["bpf.stats.enabled"]) == {(): 0}
    mp.shutdown()


def test_tag_is_optional() -> None:
    feed, reader, mp, _ = setup(MetricsOptions(include_tag=True))
    feed.push([prog(7)])
    (key,) = points(collect(reader)["bpf.program.runs"])
    assert dict(key)[names.PROGRAM_TAG] == f"{7:016x}"
    mp.shutdown()


def test_filters_by_type_name_and_owner() -> None:
    sshd = Owner(pid=10, comm="sshd", executable="sshd", via=("prog",))
    agent = Owner(pid=11, comm="cilium-agent", executable="cilium-agent", via=("link",))
    records = [
        prog(1, name="tc_ingress", type="sched_cls", owners=(agent,)),
        prog(2, name="xdp_fw", type="xdp", owners=(sshd,)),
        prog(3, name="sock_stats", owners=()),
    ]

    def ids(options: MetricsOptions) -> set[int]:
        table = SeriesTable(options)
        feed = Feed()
        table.feed(feed.push(records))
        return {dict(a)[names.PROGRAM_ID] for _, a in table.frame().get("bpf.program.runs")}

    assert ids(MetricsOptions()) == {1, 2, 3}
    assert ids(MetricsOptions(types=("xdp", "sched_*"))) == {1, 2}
    assert ids(MetricsOptions(exclude_types=("xdp",))) == {1, 3}
    assert ids(MetricsOptions(names=("re:^(tc|xdp)_",))) == {1, 2}
    assert ids(MetricsOptions(exclude_names=("*_stats",))) == {1, 2}
    assert ids(MetricsOptions(owners=("cilium*",))) == {1}
    assert ids(MetricsOptions(exclude_owners=("sshd",))) == {1, 3}
    assert MetricsOptions(owners=("x",)).needs_owners
    with pytest.raises(ValueError, match="regular expression"):
        MetricsOptions(names=("re:(",))
    with pytest.raises(TypeError):
        MetricsOptions(names="abc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attributes"):
        MetricsOptions(attributes="per_id")  # type: ignore[arg-type]
    # A type pattern that can match no program type is a typo, not an empty selection.
    for bad in (("no_such_type",), ("xpd",), ("re:^tc_",)):
        with pytest.raises(ValueError, match="matches no BPF program type"):
            MetricsOptions(types=bad)
        with pytest.raises(ValueError, match="exclude_types"):
            MetricsOptions(exclude_types=bad)
    # Globs, regular expressions and the type_N names of types newer than the table pass.
    MetricsOptions(types=("cgroup_*", "re:^sk_", "type_99", "type_*", "xdp"))


def test_by_name_type_sums_and_stays_monotonic_when_a_program_unloads() -> None:
    options = MetricsOptions(attributes="by_name_type", grace_passes=1, derived_gauges=True)
    feed, reader, mp, _ = setup(options)
    key = ((names.PROGRAM_NAME, "worker"), (names.PROGRAM_TYPE, "socket_filter"))
    a = lambda n: prog(1, name="worker", run_cnt=n, run_time_ns=10 * n)  # noqa: E731
    b = lambda n: prog(2, name="worker", run_cnt=n, run_time_ns=10 * n)  # noqa: E731
    feed.push([a(100), b(50)])
    assert points(collect(reader)["bpf.program.runs"]) == {key: 150}
    feed.push([a(200), b(60)])
    got = collect(reader)
    assert points(got["bpf.program.runs"]) == {key: 260}
    assert points(got["bpf.program.run.rate"]) == {key: 110.0}
    assert points(got["bpf.program.run.time.average"]) == {key: pytest.approx(10e-9)}
    # Program 1 unloads: its last 200 runs stay in the series.
    feed.push([b(70)])
    assert points(collect(reader)["bpf.program.runs"]) == {key: 270}
    # A reload (new id, counters from zero) continues the same series.
    feed.push([b(80), prog(3, name="worker", run_cnt=5)])
    assert points(collect(reader)["bpf.program.runs"]) == {key: 285}
    # Everything unloads: the series survives grace_passes, then goes.
    feed.push([])
    assert points(collect(reader)["bpf.program.runs"]) == {key: 285}
    feed.push([])
    assert "bpf.program.runs" not in collect(reader)
    mp.shutdown()


def test_by_name_type_accounts_snapshots_between_collections() -> None:
    feed, reader, mp, _ = setup(MetricsOptions(attributes="by_name_type"))
    key = ((names.PROGRAM_NAME, "w"), (names.PROGRAM_TYPE, "socket_filter"))
    feed.push([prog(1, name="w", run_cnt=10)])
    assert points(collect(reader)["bpf.program.runs"]) == {key: 10}
    # Program 1 ran to 40 and unloaded between two collections; program 2 appeared.
    feed.push([prog(1, name="w", run_cnt=40)])
    feed.push([prog(2, name="w", run_cnt=1)])
    assert points(collect(reader)["bpf.program.runs"]) == {key: 41}
    mp.shutdown()


def test_opt_in_metrics() -> None:
    owner = Owner(pid=42, comm="agent", executable="agent-bin", via=("prog",))
    m = MapRecord(
        id=9,
        type="hash",
        name="flows",
        key_size=4,
        value_size=8,
        max_entries=16,
        memlock_bytes=8192,
    )
    options = MetricsOptions(
        memory=True, code_size=True, verifier_instructions=True, map_memory=True, owner_series=True
    )
    assert options.needs_owners and options.needs_maps
    feed, reader, mp, _ = setup(options)
    feed.push([prog(1, owners=(owner, owner), maps=(m,)), prog(2, maps=(m,))])
    got = collect(reader)
    assert points(got["bpf.program.memory.usage"]) == {attrs(1): 4096, attrs(2): 4096}
    assert got["bpf.program.memory.usage"].unit == "By"
    assert points(got["bpf.program.code.size"]) == {attrs(1): 41, attrs(2): 42}
    assert points(got["bpf.program.verifier.instructions"]) == {attrs(1): 11, attrs(2): 12}
    assert points(got["bpf.map.memory.usage"]) == {
        ((names.MAP_ID, 9), (names.MAP_NAME, "flows"), (names.MAP_TYPE, "hash")): 8192
    }
    owner_key = tuple(
        sorted(
            dict(attrs(1), **{"process.pid": 42, "process.executable.name": "agent-bin"}).items()
        )
    )
    assert points(got["bpf.program.owner"]) == {owner_key: 1}
    mp.shutdown()


def test_the_owner_series_names_the_container_and_pod_when_known() -> None:
    container = "05c45fae4a1941581616a248d2611ade321b80a34b2d558edfb7adec56efe055"
    pod = "26988ab4-5b95-45c2-bf6d-29387c585ff9"
    in_pod = Workload(
        "/kubepods/besteffort/pod" + pod + "/" + container, container, pod, "besteffort"
    )
    in_docker = Workload("/docker/" + container, container)
    owners = (
        Owner(41, "agent", "agent", ("prog",), in_pod),
        Owner(42, "dockerd", "dockerd", ("prog",), in_docker),
        Owner(43, "sshd", "sshd", ("prog",), Workload("/system.slice/sshd.service")),
        Owner(44, "gone", "", ("prog",)),
    )
    feed, reader, mp, _ = setup(MetricsOptions(owner_series=True))
    feed.push([prog(1, owners=owners)])
    got = {
        dict(k)[names.PROCESS_PID]: dict(k) for k in points(collect(reader)["bpf.program.owner"])
    }
    mp.shutdown()
    assert (got[41][names.CONTAINER_ID], got[41][names.K8S_POD_UID]) == (container, pod)
    assert got[42][names.CONTAINER_ID] == container and names.K8S_POD_UID not in got[42]
    for pid in (43, 44):
        assert names.CONTAINER_ID not in got[pid] and names.K8S_POD_UID not in got[pid]


MISS_TYPES = ("kprobe", "tracepoint", "raw_tracepoint", "raw_tracepoint_writable", "tracing")
NO_MISS_TYPES = ("socket_filter", "xdp", "sched_cls", "sched_act", "cgroup_skb", "cgroup_sock")
NO_MISS_TYPES += ("sk_msg", "perf_event", "lsm", "ext", "syscall", "netfilter")


def typed_records() -> list[ProgramRecord]:
    types = MISS_TYPES + ("struct_ops", "type_99") + NO_MISS_TYPES
    records = [prog(i, name=f"n_{t}", type=t, misses=i) for i, t in enumerate(types, 1)]
    # A kernel before 5.12 reports no counter at all: no series either.
    records.append(prog(99, name="old", type="kprobe", misses=None))
    return records


@pytest.mark.parametrize("attributes", ["per_program", "by_name_type"])
def test_recursion_misses_only_for_types_the_kernel_can_count(attributes: str) -> None:
    table = SeriesTable(MetricsOptions(attributes=attributes))  # type: ignore[arg-type]
    table.feed(Feed().push(typed_records()))
    frame = table.frame()
    exported = {
        dict(a)[names.PROGRAM_TYPE]: v for v, a in frame.get("bpf.program.recursion.misses")
    }
    # Newer types than the table (type_N) keep their counter: the kernel may check them.
    assert set(exported) == {*MISS_TYPES, "struct_ops", "type_99"}
    assert {dict(a)[names.PROGRAM_TYPE] for _, a in frame.get("bpf.program.runs")} >= set(
        NO_MISS_TYPES
    )
    assert exported["kprobe"] == 1 and exported["type_99"] == 7


def test_recursion_checked_types_are_kernel_type_names() -> None:
    from otel_bpf.kernel.prog_types import (
        PROG_TYPE_NAMES,
        RECURSION_CHECKED_TYPES,
        can_count_recursion_misses,
    )

    assert set(PROG_TYPE_NAMES) >= RECURSION_CHECKED_TYPES
    assert set(MISS_TYPES) <= RECURSION_CHECKED_TYPES
    assert not any(can_count_recursion_misses(t) for t in NO_MISS_TYPES + ("unspec",))


def test_derived_gauges_are_opt_in() -> None:
    records = lambda n: [prog(1, run_cnt=n, run_time_ns=100 * n)]  # noqa: E731
    for derived in (False, True):
        feed, reader, mp, inst = setup(MetricsOptions(derived_gauges=derived))
        feed.push(records(10))
        feed.push(records(30))
        got = collect(reader)
        gauges = {names.RUN_TIME_AVERAGE.name, names.RUN_RATE.name, names.CPU_UTILIZATION.name}
        assert (gauges <= set(got)) is derived
        assert (gauges <= {m.name for m in inst.metrics}) is derived
        if derived:
            assert points(got[names.RUN_RATE.name]) == {attrs(1): 20.0}
        mp.shutdown()


def test_opt_in_metrics_are_off_by_default() -> None:
    feed, reader, mp, _ = setup()
    feed.push([prog(1)])
    got = collect(reader)
    for metric in names.OPT_IN:
        assert metric.name not in got
    mp.shutdown()


def test_closed_instruments_observe_nothing() -> None:
    feed, reader, mp, inst = setup()
    feed.push([prog(1)])
    assert "bpf.program.runs" in collect(reader)
    inst.close()
    assert collect(reader) == {}
    inst.reopen()
    assert "bpf.program.runs" in collect(reader)
    mp.shutdown()


def test_callbacks_count_collections() -> None:
    feed, reader, mp, inst = setup()
    assert inst.collections == 0 and inst.last_collection is None
    collect(reader)
    collect(reader)
    assert inst.collections == 2 and inst.last_collection is not None
    mp.shutdown()


def test_callback_failure_logs_once_per_burst(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> list[Snapshot]:
        raise RuntimeError("boom")

    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    create_instruments(mp, broken)
    with caplog.at_level(logging.WARNING):
        collect(reader)
        collect(reader)
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    mp.shutdown()


@pytest.mark.parametrize(
    "temporality", [AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA]
)
def test_churned_programs_never_overflow_the_cardinality_limit(
    temporality: AggregationTemporality,
) -> None:
    # A limit of 5 attribute sets per instrument, and 200 distinct programs over time, at most 3
    # alive at once: without releasing stale series every program after the 5th would be
    # folded into otel.metric.overflow.
    limit = 5
    feed, reader, mp, inst = setup(
        cardinality_limits={
            ObservableCounter: limit,
            ObservableGauge: limit,
            ObservableUpDownCounter: limit,
        },
        preferred_temporality={
            ObservableCounter: temporality,
            ObservableUpDownCounter: temporality,
        },
    )
    for first in range(1, 200, 3):
        live = [prog(i, run_cnt=i) for i in range(first, first + 3)]
        feed.push(live)
        feed.push([prog(i, run_cnt=i + 1) for i in range(first, first + 3)])
        got = collect(reader)
        runs = points(got["bpf.program.runs"])
        if temporality is AggregationTemporality.CUMULATIVE:
            assert runs == {attrs(p.id): p.id + 1 for p in live}
        else:
            assert set(runs) == {attrs(p.id) for p in live}
        for m in got.values():
            for p in m.data.data_points:
                assert "otel.metric.overflow" not in p.attributes, m.name
    assert inst.pruner is not None and inst.pruner.active
    assert inst.pruner.released > 0
    mp.shutdown()


def test_two_readers_release_series_that_vanished_between_their_collections() -> None:
    """A collection that only adds series skips the scan; one where a series vanished
    releases it from every reader's state, whichever reader collects next."""
    feed = Feed()
    limit = {ObservableCounter: 4}
    first = InMemoryMetricReader(cardinality_limits=limit)
    second = InMemoryMetricReader(cardinality_limits=limit)
    mp = MeterProvider(metric_readers=[first, second], shutdown_on_exit=False)
    inst = create_instruments(mp, feed)
    for i in range(1, 40):
        # Two programs loaded at a time: i and i + 1; the first reader collects twice as often.
        feed.push([prog(i, run_cnt=i), prog(i + 1, run_cnt=i + 1)])
        for reader in (first, first, second) if i % 2 else (second, first):
            runs = points(collect(reader)["bpf.program.runs"])
            assert runs == {attrs(i): i, attrs(i + 1): i + 1}, (i, runs)
    assert inst.pruner is not None and inst.pruner.active
    assert inst.pruner.released >= 2 * 37
    mp.shutdown()


def test_user_view_dropping_the_id_keeps_working() -> None:
    feed = Feed()
    reader = InMemoryMetricReader(cardinality_limits={ObservableCounter: 3})
    view = View(
        instrument_name="bpf.program.runs",
        attribute_keys={names.PROGRAM_NAME, names.PROGRAM_TYPE},
    )
    mp = MeterProvider(metric_readers=[reader], views=[view], shutdown_on_exit=False)
    create_instruments(mp, feed)
    for i in range(1, 20):
        feed.push([prog(i, name="same", run_cnt=7)])
        runs = points(collect(reader)["bpf.program.runs"])
        assert runs == {((names.PROGRAM_NAME, "same"), (names.PROGRAM_TYPE, "socket_filter")): 7}
    mp.shutdown()


def test_instruments_work_without_an_sdk_provider() -> None:
    from opentelemetry.metrics import NoOpMeterProvider

    feed = Feed()
    feed.push([prog(1)])
    inst = create_instruments(NoOpMeterProvider(), feed)
    assert inst.frame().get("bpf.program.runs")


def test_by_name_type_tolerates_load_time_wobble_and_id_reuse() -> None:
    from dataclasses import replace

    feed, reader, mp, _ = setup(MetricsOptions(attributes="by_name_type"))
    key = ((names.PROGRAM_NAME, "w"), (names.PROGRAM_TYPE, "socket_filter"))
    base = prog(1, name="w", run_cnt=10)
    feed.push([base])
    # The same program, its load time re-derived a few microseconds apart: not a new program.
    feed.push([replace(base, run_cnt=20, load_time=base.load_time + 3e-6)])
    assert points(collect(reader)["bpf.program.runs"]) == {key: 20}
    # Id 1 now names another program (counters restarted): the old one's 20 runs stay.
    feed.push([replace(base, run_cnt=4, load_time=base.load_time + 500)])
    assert points(collect(reader)["bpf.program.runs"]) == {key: 24}
    mp.shutdown()


def test_a_second_set_of_instruments_on_the_same_provider_takes_over() -> None:
    feed, reader, mp, first = setup()
    feed.push([prog(1, run_cnt=5)])
    assert points(collect(reader)["bpf.program.runs"]) == {attrs(1): 5}
    first.close()
    # The meter returns the instruments it already has (with their first callbacks); the new
    # object must still be the one observed.
    other = Feed()
    other.push([prog(2, run_cnt=9)])
    second = create_instruments(mp, other)
    assert points(collect(reader)["bpf.program.runs"]) == {attrs(2): 9}
    assert second.collections == 1
    mp.shutdown()


def test_global_provider_set_after_the_instruments_were_created() -> None:
    # The API's proxy provider: instruments created before set_meter_provider() are proxies
    # whose real instruments the SDK stores; stale series must still be released.
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    proxy = _ProxyMeterProvider()
    feed = Feed()
    inst = create_instruments(proxy, feed)  # type: ignore[arg-type]
    reader = InMemoryMetricReader(cardinality_limits={ObservableCounter: 3})
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    proxy.on_set_meter_provider(mp)
    for i in range(1, 10):
        feed.push([prog(i, run_cnt=i)])
        assert points(collect(reader)["bpf.program.runs"]) == {attrs(i): i}
    assert inst.pruner is not None and inst.pruner.active and inst.pruner.released >= 8
    mp.shutdown()


def test_program_count_of_a_type_drops_to_zero() -> None:
    feed, reader, mp, _ = setup()
    feed.push([prog(1, type="xdp"), prog(2)])
    feed.push([prog(2)])
    count = points(collect(reader)["bpf.program.count"])
    assert count == {
        ((names.PROGRAM_TYPE, "socket_filter"),): 1,
        ((names.PROGRAM_TYPE, "xdp"),): 0,
    }
    mp.shutdown()


# -- per-CPU counters (MetricsOptions(per_cpu=True)) --------------------------------------


def cpu_prog(pid: int, cpus: dict[int, tuple[int, int, int]], **kw: Any) -> ProgramRecord:
    """``prog()`` with per-CPU counters: cpu -> (run_cnt, run_time_ns, recursion_misses),
    the totals their sums."""
    per_cpu = tuple(CpuCounters(c, t, n, m) for c, (n, t, m) in sorted(cpus.items()))
    return replace(
        prog(
            pid,
            run_cnt=sum(n for n, _, _ in cpus.values()),
            run_time_ns=sum(t for _, t, _ in cpus.values()),
            misses=sum(m for _, _, m in cpus.values()),
            **kw,
        ),
        per_cpu=per_cpu,
    )


def on_cpu(key: tuple[Any, ...], cpu: int) -> tuple[Any, ...]:
    return tuple(sorted((*key, (names.CPU_LOGICAL_NUMBER, cpu))))


def test_per_cpu_counters_split_the_totals_by_cpu_logical_number() -> None:
    feed, reader, mp, inst = setup(MetricsOptions(per_cpu=True))
    assert [m.name for m in inst.metrics][-3:] == [m.name for m in names.PER_CPU]
    feed.push(
        [
            cpu_prog(1, {0: (30, 3000, 0), 1: (0, 0, 0)}),
            cpu_prog(2, {0: (1, 10, 0), 1: (4, 40, 2)}, type="kprobe"),
        ]
    )
    got = collect(reader)
    for metric in names.PER_CPU:
        m = got[metric.name]
        assert (m.unit, m.data.is_monotonic) == (metric.unit, True), metric.name
        assert m.data.aggregation_temporality is AggregationTemporality.CUMULATIVE
    assert points(got["bpf.program.cpu.runs"]) == {
        on_cpu(attrs(1), 0): 30,
        on_cpu(attrs(1), 1): 0,
        on_cpu(attrs(2, type="kprobe"), 0): 1,
        on_cpu(attrs(2, type="kprobe"), 1): 4,
    }
    run_time = points(got["bpf.program.cpu.run.time"])
    assert run_time[on_cpu(attrs(1), 0)] == pytest.approx(3e-6)
    assert run_time[on_cpu(attrs(2, type="kprobe"), 1)] == pytest.approx(40e-9)
    # Misses per CPU only for a type that can miss a run, as the totals.
    assert points(got["bpf.program.cpu.recursion.misses"]) == {
        on_cpu(attrs(2, type="kprobe"), 0): 0,
        on_cpu(attrs(2, type="kprobe"), 1): 2,
    }
    # The totals are unchanged, without the CPU attribute.
    assert points(got["bpf.program.runs"]) == {attrs(1): 30, attrs(2, type="kprobe"): 5}
    mp.shutdown()


def test_no_per_cpu_series_by_default_even_when_records_have_them() -> None:
    feed, reader, mp, inst = setup()
    assert not set(inst.metrics) & set(names.PER_CPU)
    feed.push([cpu_prog(1, {0: (3, 30, 0), 1: (2, 20, 0)}, type="kprobe")])
    got = collect(reader)
    assert not {m.name for m in names.PER_CPU} & set(got)
    for m in got.values():
        for p in m.data.data_points:
            assert names.CPU_LOGICAL_NUMBER not in p.attributes, m.name
    mp.shutdown()


def test_per_cpu_options_read_per_cpu_counters() -> None:
    assert MetricsOptions(per_cpu=True).source_options.per_cpu
    assert not MetricsOptions().source_options.per_cpu


def test_per_cpu_by_name_type_sums_per_cpu_and_stays_monotonic_when_a_program_unloads() -> None:
    feed, reader, mp, _ = setup(
        MetricsOptions(attributes="by_name_type", grace_passes=1, per_cpu=True)
    )
    key = ((names.PROGRAM_NAME, "worker"), (names.PROGRAM_TYPE, "socket_filter"))
    feed.push(
        [
            cpu_prog(1, {0: (100, 1000, 0), 1: (0, 0, 0)}, name="worker"),
            cpu_prog(2, {0: (5, 50, 0), 1: (50, 500, 0)}, name="worker"),
        ]
    )
    assert points(collect(reader)["bpf.program.cpu.runs"]) == {
        on_cpu(key, 0): 105,
        on_cpu(key, 1): 50,
    }
    # Program 1 unloads: what it counted on each CPU stays in that CPU's series.
    feed.push([cpu_prog(2, {0: (5, 50, 0), 1: (70, 700, 0)}, name="worker")])
    got = collect(reader)
    assert points(got["bpf.program.cpu.runs"]) == {on_cpu(key, 0): 105, on_cpu(key, 1): 70}
    assert points(got["bpf.program.runs"]) == {key: 175}
    assert points(got["bpf.program.cpu.run.time"]) == {
        on_cpu(key, 0): pytest.approx(1050e-9),
        on_cpu(key, 1): pytest.approx(700e-9),
    }
    # A reload continues the series, CPU by CPU.
    feed.push(
        [
            cpu_prog(2, {0: (5, 50, 0), 1: (70, 700, 0)}, name="worker"),
            cpu_prog(3, {0: (0, 0, 0), 1: (9, 90, 0)}, name="worker"),
        ]
    )
    assert points(collect(reader)["bpf.program.cpu.runs"]) == {
        on_cpu(key, 0): 105,
        on_cpu(key, 1): 79,
    }
    mp.shutdown()


@pytest.mark.parametrize(("programs", "cpus"), [(1200, 2), (700, 8)])
def test_per_cpu_series_never_overflow_the_cardinality_limit(programs: int, cpus: int) -> None:
    """Programs x CPUs series per instrument, beyond the SDK's default limit of 2000: the
    limit is sized from the series each callback reports, so none is folded into overflow."""
    feed, reader, mp, inst = setup(MetricsOptions(per_cpu=True))
    feed.push(
        [cpu_prog(i, {c: (i + c, 0, 0) for c in range(cpus)}) for i in range(1, programs + 1)]
    )
    got = collect(reader)
    for m in got.values():
        for p in m.data.data_points:
            assert "otel.metric.overflow" not in p.attributes, m.name
    runs = points(got["bpf.program.cpu.runs"])
    assert len(runs) == programs * cpus
    assert runs[on_cpu(attrs(programs), cpus - 1)] == programs + cpus - 1
    assert inst.pruner is not None and inst.pruner.cardinality_limit >= programs * cpus
    mp.shutdown()
