"""The derived figures as pure functions: known values, first samples, no runs, resets."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_bpf import figures
from otel_bpf.records import ProgramRecord

A = ProgramRecord(
    id=7,
    type="xdp",
    type_id=6,
    name="fw",
    tag="0123456789abcdef",
    run_time_ns=1_000_000,
    run_cnt=1_000,
    recursion_misses=0,
    load_time=1_700_000_000.5,
    uid=0,
    verified_insns=30,
    xlated_size=240,
    jited_size=180,
    map_ids=(),
    btf_id=0,
    memlock_bytes=4096,
)


def later(run_cnt: int, run_time_ns: int, rec: ProgramRecord = A) -> ProgramRecord:
    return replace(rec, run_cnt=run_cnt, run_time_ns=run_time_ns)


B = later(run_cnt=3_000, run_time_ns=5_000_000)  # 2000 runs, 4 ms more than A


def test_period_average_runtime() -> None:
    assert figures.period_avg_runtime_ns(A, B) == 2_000.0


def test_total_average_runtime() -> None:
    assert figures.total_avg_runtime_ns(A) == 1_000.0
    assert figures.total_avg_runtime_ns(B) == pytest.approx(5_000_000 / 3_000)


def test_events_per_second() -> None:
    assert figures.events_per_sec(A, B, 2.0) == 1_000.0
    assert figures.events_per_sec(A, B, 0.5) == 4_000.0


def test_cpu_percent_is_of_one_core_and_can_exceed_100() -> None:
    # 4 ms of run time in 2 s = 0.2 % of one core.
    assert figures.cpu_percent(A, B, 2.0) == pytest.approx(0.2)
    # 3 s of run time in 1 s = three cores busy = 300 %.
    busy = later(run_cnt=4_000, run_time_ns=A.run_time_ns + 3_000_000_000)
    assert figures.cpu_percent(A, busy, 1.0) == pytest.approx(300.0)


@pytest.mark.parametrize("cpus", [1, 2, 4, 96])
def test_cpu_utilization_is_percent_over_100_over_online_cpus(cpus: int) -> None:
    busy = later(run_cnt=4_000, run_time_ns=A.run_time_ns + 3_000_000_000)
    pct = figures.cpu_percent(A, busy, 1.0)
    assert pct is not None
    assert figures.cpu_utilization(A, busy, 1.0, cpus) == pytest.approx(min(1.0, pct / 100 / cpus))
    assert figures.cpu_utilization(A, B, 2.0, cpus) == pytest.approx(0.002 / cpus)


def test_first_sample_has_no_rates() -> None:
    assert figures.period_avg_runtime_ns(None, B) is None
    assert figures.events_per_sec(None, B, 1.0) is None
    assert figures.cpu_percent(None, B, 1.0) is None
    assert figures.cpu_utilization(None, B, 1.0, 4) is None
    # The lifetime average does not need a previous sample.
    assert figures.total_avg_runtime_ns(B) is not None


def test_no_runs_in_the_period() -> None:
    same = later(run_cnt=A.run_cnt, run_time_ns=A.run_time_ns)
    assert figures.period_avg_runtime_ns(A, same) is None
    assert figures.events_per_sec(A, same, 1.0) == 0.0
    assert figures.cpu_percent(A, same, 1.0) == 0.0
    assert figures.cpu_utilization(A, same, 1.0, 2) == 0.0


def test_never_ran() -> None:
    fresh = later(run_cnt=0, run_time_ns=0)
    assert figures.total_avg_runtime_ns(fresh) is None
    assert figures.period_avg_runtime_ns(fresh, fresh) is None


@pytest.mark.parametrize(
    "cur",
    [
        later(run_cnt=A.run_cnt - 1, run_time_ns=A.run_time_ns + 10),
        later(run_cnt=A.run_cnt + 1, run_time_ns=A.run_time_ns - 10),
        replace(B, load_time=A.load_time + 60),
        replace(B, id=A.id + 1),
    ],
    ids=["runs-backwards", "time-backwards", "reloaded", "other-id"],
)
def test_a_different_program_starts_afresh(cur: ProgramRecord) -> None:
    assert not figures.comparable(A, cur)
    assert figures.period_avg_runtime_ns(A, cur) is None
    assert figures.events_per_sec(A, cur, 1.0) is None
    assert figures.cpu_percent(A, cur, 1.0) is None
    assert figures.cpu_utilization(A, cur, 1.0, 2) is None


def test_load_time_wobble_of_the_same_program_is_tolerated() -> None:
    wobbly = replace(B, load_time=A.load_time + 2e-6)
    assert figures.comparable(A, wobbly)
    assert figures.events_per_sec(A, wobbly, 2.0) == 1_000.0


@pytest.mark.parametrize("dt", [None, 0.0, -1.0])
def test_no_elapsed_time_no_rates(dt: float | None) -> None:
    assert figures.events_per_sec(A, B, dt) is None
    assert figures.cpu_percent(A, B, dt) is None
    assert figures.cpu_utilization(A, B, dt, 2) is None


def test_zero_online_cpus_gives_no_utilization() -> None:
    assert figures.cpu_utilization(A, B, 1.0, 0) is None


@given(
    runs=st.integers(min_value=0, max_value=10**12),
    ns=st.integers(min_value=0, max_value=10**15),
    dt=st.floats(min_value=1e-3, max_value=3600),
    cpus=st.integers(min_value=1, max_value=1024),
)
def test_rates_are_never_negative_and_consistent(runs: int, ns: int, dt: float, cpus: int) -> None:
    cur = later(run_cnt=A.run_cnt + runs, run_time_ns=A.run_time_ns + ns)
    eps = figures.events_per_sec(A, cur, dt)
    pct = figures.cpu_percent(A, cur, dt)
    util = figures.cpu_utilization(A, cur, dt, cpus)
    assert eps is not None and eps >= 0
    assert pct is not None and pct >= 0
    assert util == pytest.approx(min(1.0, pct / 100 / cpus))
    avg = figures.period_avg_runtime_ns(A, cur)
    if runs == 0:
        assert avg is None
    else:
        assert avg == pytest.approx(ns / runs)


def test_rates_and_series_share_one_idea_of_the_same_program() -> None:
    """figures.comparable (rates) and the by-name series use one definition: a reused id
    whose recursion misses went backwards is another program for both."""
    from otel_bpf.otel import series

    busier = replace(later(2_000, 2_000_000), recursion_misses=5)
    reused = replace(later(3_000, 3_000_000), recursion_misses=1)
    assert figures.comparable(A, busier) and figures.same_program(A, busier)
    assert not figures.comparable(busier, reused)
    assert not figures.same_program(busier, reused)
    assert series.same_program is figures.same_program
    assert figures.cpu_percent(busier, reused, 1.0) is None


@given(
    st.none() | st.tuples(st.integers(0, 10**6), st.integers(0, 10**9), st.floats(-2, 2)),
    st.tuples(st.integers(0, 10**6), st.integers(0, 10**9)),
    st.none() | st.floats(-1, 5),
    st.integers(-1, 64),
)
def test_a_sample_holds_the_figures_of_the_figure_functions(
    before: tuple[int, int, float] | None,
    now: tuple[int, int],
    dt: float | None,
    cpus: int,
) -> None:
    # derive() computes the figures in one go; it must agree with the functions the
    # exporters document, to the last bit.
    from otel_bpf.snapshot import derive

    prev = None
    if before is not None:
        prev = replace(
            A, run_cnt=before[0], run_time_ns=before[1], load_time=A.load_time + before[2]
        )
    cur = replace(A, run_cnt=now[0], run_time_ns=now[1])
    sample = derive(prev, cur, dt, cpus)
    assert sample.program is cur
    assert sample.period_avg_runtime_ns == figures.period_avg_runtime_ns(prev, cur)
    assert sample.total_avg_runtime_ns == figures.total_avg_runtime_ns(cur)
    assert sample.events_per_sec == figures.events_per_sec(prev, cur, dt)
    assert sample.cpu_percent == figures.cpu_percent(prev, cur, dt)
    assert sample.cpu_utilization == figures.cpu_utilization(prev, cur, dt, cpus)


def test_a_share_above_all_cpus_is_timing_error_and_capped_at_one() -> None:
    # 2.013 s of run time in a period timed as 1 s on two CPUs: the clock read and the counter
    # read were a few milliseconds apart on a saturated host.  The share is 1, the percentage
    # of one core (like top) stays as measured.
    busy = replace(A, run_time_ns=A.run_time_ns + 2_013_000_000)
    assert figures.cpu_percent(A, busy, 1.0) == pytest.approx(201.3)
    assert figures.cpu_utilization(A, busy, 1.0, 2) == 1.0
    assert figures.cpu_utilization(A, busy, 1.0, 4) == pytest.approx(0.50325)
    assert figures.cpu_share(1_006_500_000, 1.0) == 1.0
    assert figures.cpu_share(500_000_000, 1.0) == 0.5
