"""Per-CPU counters without a kernel: the pass bytes of the per-CPU variant, the merge, the
figures and the ``per_cpu`` key of ``--json``."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from otel_bpf import figures
from otel_bpf.cli import jsonl
from otel_bpf.cli.args import parse_args
from otel_bpf.cli.config import resolve
from otel_bpf.kernel.iterator.merge import PassMerger
from otel_bpf.kernel.iterator.progs import PER_CPU, RECORD, PassColumns, decode, record_size
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.records import CpuCounters, ProgramRecord, StatsState
from otel_bpf.snapshot import build_snapshot

ON = StatsState(ours=True, sysctl=False, others=False)
CPUS = (0, 1, 3)  # sparse, as a possible mask may be

# id, load time, [(cnt, nsecs, misses) per CPU]
Row = tuple[int, int, list[tuple[int, int, int]]]


def static(prog_id: int, load_time_ns: int) -> ProgramRecord:
    return ProgramRecord(
        id=prog_id, type="xdp", type_id=6, name=f"prog_{prog_id}", tag="ab" * 8,
        run_time_ns=0, run_cnt=0, recursion_misses=0, load_time=1e9 + load_time_ns / 1e9,
        uid=0, verified_insns=9, xlated_size=72, jited_size=60, map_ids=(),
        btf_id=0, memlock_bytes=None,
    )  # fmt: skip


def pack(rows: list[Row]) -> bytes:
    """As the per-CPU variant writes them: the record with the sums, then the block."""
    out = []
    for pid, lt, cpus in rows:
        cnt, ns, misses = (sum(c[i] for c in cpus) for i in range(3))
        out.append(RECORD.pack(pid, 6, b"prog_%d" % pid, lt, ns, cnt, misses))
        out.extend(PER_CPU.pack(*c) for c in cpus)
    return b"".join(out)


def merger() -> PassMerger:
    def read_one(prog_id: int, *, boot_offset: float | None = None) -> ProgramRecord:
        return static(prog_id, prog_id * 10)

    return PassMerger(read_static=read_one, boot_offset=lambda: 1e9)


def test_columns_and_decode_read_the_per_cpu_variant() -> None:
    rows: list[Row] = [(5, 50, [(1, 10, 0), (2, 20, 0), (0, 0, 1)]), (9, 90, [(0, 0, 0)] * 3)]
    data = pack(rows) + b"\0" * 30  # a torn tail is ignored
    assert record_size(3) == RECORD.size + 3 * 24
    columns = PassColumns(data, 3)
    assert columns.ids.tolist() == [5, 9] and columns.run_counts.tolist() == [3, 0]
    # Row 0's per-CPU block, [cnt, nsecs, misses] per CPU, read column by column.
    row0 = [column[0] for i in range(3) for column in columns.cpu_column(i)]
    assert row0 == [1, 10, 0, 2, 20, 0, 0, 0, 1]
    assert columns.cpu_column(0) == ([1, 0], [10, 0], [0, 0])
    assert columns.recursion_misses.tolist() == [1, 0]
    assert [r.id for r in decode(data, 3)] == [5, 9]
    assert decode(data, 3)[0].run_time_ns == 30


def test_merge_gives_per_cpu_counters_that_sum_to_the_totals() -> None:
    m = merger()
    rows: list[Row] = [(5, 50, [(1, 10, 0), (2, 20, 0), (0, 0, 1)]), (9, 90, [(0, 0, 0)] * 3)]
    records, errors = m.merge(pack(rows), False, cpus=CPUS)
    assert not errors
    first = records[0]
    assert first.per_cpu == (
        CpuCounters(0, 10, 1, 0),
        CpuCounters(1, 20, 2, 0),
        CpuCounters(3, 0, 0, 1),
    )
    assert (first.run_cnt, first.run_time_ns, first.recursion_misses) == (3, 30, 1)
    assert records[1].per_cpu == tuple(CpuCounters(c, 0, 0, 0) for c in CPUS)

    # Nothing ran: the very same records (consumers skip them by identity).
    again, _ = m.merge(pack(rows), False, cpus=CPUS)
    assert again[0] is first and again[1] is records[1]

    # Program 5 ran on CPU 3 only: a new record with the new split, 9 kept.
    rows[0] = (5, 50, [(1, 10, 0), (2, 20, 0), (4, 400, 1)])
    moved, _ = m.merge(pack(rows), False, cpus=CPUS)
    assert moved[0].per_cpu is not None and moved[0].per_cpu[2] == CpuCounters(3, 400, 4, 1)
    assert moved[0].run_cnt == 7 and moved[1] is records[1]
    assert first.per_cpu[2] == CpuCounters(3, 0, 0, 1)  # the old record is left alone


def test_per_cpu_counters_stay_with_their_program_around_left_out_rows() -> None:
    # Rows left out (the source's own program, id 7) are cut from every CPU's column; the
    # others keep their own counters, also when a new program joins the pass.
    m = merger()
    rows: list[Row] = [
        (5, 50, [(1, 10, 0), (0, 0, 0), (0, 0, 0)]),
        (7, 70, [(9, 99, 9)] * 3),
        (9, 90, [(0, 0, 0), (0, 0, 0), (2, 20, 0)]),
    ]
    records, _ = m.merge(pack(rows), False, frozenset({7}), cpus=CPUS)
    assert [r.id for r in records] == [5, 9]
    assert records[0].per_cpu == (
        CpuCounters(0, 10, 1, 0),
        *(CpuCounters(c, 0, 0, 0) for c in (1, 3)),
    )
    assert records[1].per_cpu is not None and records[1].per_cpu[2] == CpuCounters(3, 20, 2, 0)

    # Program 9 runs on CPU 1, program 6 appears: 5 is kept, 9 and 6 get their own split.
    rows[2] = (9, 90, [(0, 0, 0), (5, 50, 0), (2, 20, 0)])
    rows.insert(1, (6, 60, [(0, 0, 0), (0, 0, 0), (3, 33, 0)]))
    after, _ = m.merge(pack(rows), False, frozenset({7}), cpus=CPUS)
    assert [r.id for r in after] == [5, 6, 9]
    assert after[0] is records[0]
    assert after[1].per_cpu == (
        CpuCounters(0, 0, 0, 0),
        CpuCounters(1, 0, 0, 0),
        CpuCounters(3, 33, 3, 0),
    )
    assert after[2].per_cpu == (
        CpuCounters(0, 0, 0, 0),
        CpuCounters(1, 50, 5, 0),
        CpuCounters(3, 20, 2, 0),
    )
    for r in after:
        assert r.per_cpu is not None and sum(c.run_cnt for c in r.per_cpu) == r.run_cnt


def test_switching_per_cpu_off_and_on() -> None:
    m = merger()
    rows: list[Row] = [(5, 50, [(1, 10, 0), (2, 20, 0), (0, 0, 0)])]
    plain_bytes = b"".join(RECORD.pack(5, 6, b"prog_5", 50, 30, 3, 0) for _ in range(1))
    plain, _ = m.merge(plain_bytes, False)
    assert plain[0].per_cpu is None
    per_cpu, _ = m.merge(pack(rows), False, cpus=CPUS)
    assert per_cpu[0].per_cpu is not None and plain[0].per_cpu is None  # a copy
    assert per_cpu[0].run_cnt == 3
    off, _ = m.merge(plain_bytes, False)
    assert off[0].per_cpu is None and off[0].run_cnt == 3


def record(cpus: list[tuple[int, int]] | None, load_time: float = 1.0) -> ProgramRecord:
    """A record whose per-CPU (runs, ns) are ``cpus`` on CPUs 0.. (None: no per-CPU)."""
    per_cpu = None
    if cpus is not None:
        per_cpu = tuple(CpuCounters(i, ns, n, 0) for i, (n, ns) in enumerate(cpus))
    return replace(
        static(1, 10),
        run_cnt=sum(n for n, _ in cpus or [(0, 0)]),
        run_time_ns=sum(ns for _, ns in cpus or [(0, 0)]),
        load_time=load_time,
        per_cpu=per_cpu,
    )


def test_per_cpu_figures_over_a_period() -> None:
    a = build_snapshot(
        None, [record([(10, 1000), (0, 0)])], monotonic=1.0, wall_time=0, online_cpus=2, stats=ON
    )
    (first,) = a.programs
    assert first.per_cpu is not None and first.cpu_imbalance is None
    assert [c.events_per_sec for c in first.per_cpu] == [None, None]  # a first sample
    assert [c.run_cnt for c in first.per_cpu] == [10, 0]
    # Two seconds: 100 runs on CPU 0 (0.2 s of it), 300 on CPU 1 (0.6 s of it).
    now = record([(110, 1000 + 400_000_000), (300, 1_200_000_000)])
    b = build_snapshot(a, [now], monotonic=3.0, wall_time=0, online_cpus=2, stats=ON)
    (second,) = b.programs
    assert second.per_cpu is not None
    cpu0, cpu1 = second.per_cpu
    assert (cpu0.events_per_sec, cpu1.events_per_sec) == (50.0, 150.0)
    assert cpu0.period_avg_runtime_ns == pytest.approx(4_000_000)
    assert cpu1.period_avg_runtime_ns == pytest.approx(4_000_000)
    assert (cpu0.cpu_utilization, cpu1.cpu_utilization) == pytest.approx((0.2, 0.6))
    assert second.cpu_imbalance == pytest.approx(0.6 / 0.4)
    # The per-CPU shares add up to the program's share of all CPUs.
    assert second.cpu_utilization == pytest.approx((0.2 + 0.6) / 2)


def test_per_cpu_figures_follow_the_totals_rules() -> None:
    before = record([(10, 1000), (5, 500)])
    # A reused id (another load time): no figures, as for the totals.
    reused = record([(20, 2000), (5, 500)], load_time=100.0)
    assert figures.cpu_deltas(before, reused) is None
    # A CPU whose counters went backwards is another program too.
    backwards = record([(30, 3000), (4, 400)])
    assert figures.cpu_deltas(before, backwards) is None
    assert figures.cpu_deltas(None, before) is None
    assert figures.cpu_deltas(record(None), before) is None
    assert figures.cpu_deltas(before, record([(11, 1100), (5, 500)])) == {0: (1, 100), 1: (0, 0)}
    # Nothing ran: no imbalance (0 / 0), no average; rates are 0.
    a = build_snapshot(None, [before], monotonic=1.0, wall_time=0, online_cpus=2, stats=ON)
    b = build_snapshot(a, [before], monotonic=2.0, wall_time=0, online_cpus=2, stats=ON)
    (idle,) = b.programs
    assert idle.cpu_imbalance is None and idle.per_cpu is not None
    assert [(c.events_per_sec, c.period_avg_runtime_ns) for c in idle.per_cpu] == [
        (0.0, None),
        (0.0, None),
    ]
    assert figures.cpu_imbalance([0.5, 0.0]) == 2.0 and figures.cpu_imbalance([0.3, 0.3]) == 1.0
    assert figures.cpu_imbalance([0.5, None]) is None and figures.cpu_imbalance([]) is None


def test_a_record_without_per_cpu_has_no_per_cpu_figures() -> None:
    a = build_snapshot(None, [record(None)], monotonic=1.0, wall_time=0, online_cpus=2, stats=ON)
    (sample,) = a.programs
    assert sample.per_cpu is None and sample.cpu_imbalance is None
    assert json.loads(jsonl.snapshot_lines(a)[0])["per_cpu"] is None


def test_json_per_cpu_key() -> None:
    a = build_snapshot(
        None, [record([(10, 1000), (0, 0)])], monotonic=1.0, wall_time=0, online_cpus=2, stats=ON
    )
    now = record([(110, 1000 + 400_000_000), (10, 20)])
    b = build_snapshot(a, [now], monotonic=3.0, wall_time=0, online_cpus=2, stats=ON)
    first = json.loads(jsonl.snapshot_lines(a)[0])["per_cpu"]
    assert first == [
        {"cpu": 0, "run_cnt": 10, "run_time_ns": 1000, "recursion_misses": 0,
         "events_per_sec": None, "cpu_utilization": None},
        {"cpu": 1, "run_cnt": 0, "run_time_ns": 0, "recursion_misses": 0,
         "events_per_sec": None, "cpu_utilization": None},
    ]  # fmt: skip
    obj = json.loads(jsonl.snapshot_lines(b)[0])
    # per_cpu came after owners; attachments were added after it (keys only ever append).
    assert list(obj)[-2:] == ["per_cpu", "attachments"]
    cpu0, cpu1 = obj["per_cpu"]
    assert (cpu0["events_per_sec"], cpu1["events_per_sec"]) == (50.0, 5.0)
    assert cpu0["cpu_utilization"] == pytest.approx(0.2)
    assert sum(c["run_cnt"] for c in obj["per_cpu"]) == obj["run_cnt"]


def test_per_cpu_option_reaches_the_source_options() -> None:
    from otel_bpf.cli.main import _source_options
    from otel_bpf.otel.options import MetricsOptions

    config = resolve(parse_args(["--json", "--per-cpu"]), {})
    assert config.per_cpu
    assert _source_options(config, MetricsOptions()).per_cpu
    plain = resolve(parse_args(["--json"]), {})
    assert not plain.per_cpu and not _source_options(plain, MetricsOptions()).per_cpu


def test_too_many_cpus_for_a_per_cpu_record_is_refused_before_loading() -> None:
    from otel_bpf.kernel.errors import BpfUnsupportedError
    from otel_bpf.kernel.iterator.progs import ProgIterator, ProgIterLayout

    layout = ProgIterLayout(*range(17))  # never assembled: refused first
    with pytest.raises(BpfUnsupportedError, match="1364 possible CPUs"):
        ProgIterator(layout, range(1364), per_cpu=True)


def test_auto_without_the_iterator_refuses_per_cpu_instead_of_falling_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from otel_bpf.kernel import open_source as module
    from otel_bpf.kernel.errors import BpfUnsupportedError
    from otel_bpf.kernel.iterator.selfcheck import IteratorUnavailableError

    def unavailable(*args: object, **kwargs: object) -> None:
        raise IteratorUnavailableError(95, "iter/bpf_prog could not be loaded: no BTF")

    monkeypatch.setattr(module, "open_iterator_source", unavailable)
    with pytest.raises(BpfUnsupportedError, match="iterator sampling path") as info:
        module.open_source("auto", SourceOptions(per_cpu=True))
    assert "no BTF" in str(info.value)
    with pytest.raises(BpfUnsupportedError, match="iterator sampling path"):
        module.open_source("syscall", SourceOptions(per_cpu=True))
