"""The live view's own chart history: what it keeps matches the snapshots it came from."""

from __future__ import annotations

import math
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from live_samples import program, snapshots, steady

from otel_bpf.live.context import RenderContext
from otel_bpf.live.history import FIGURES, ChartHistory
from otel_bpf.live.options import Glyphs, LiveOptions
from otel_bpf.live.render_detail import CHARTS, window_text
from otel_bpf.records import ProgramRecord
from otel_bpf.snapshot import Snapshot


def from_snapshots(window: list[Snapshot], prog_id: int, figure: str) -> list[float | None]:
    """A figure of one program over ``window`` read straight from the snapshots."""
    out: list[float | None] = []
    for snap in window:
        sample = snap.get(prog_id)
        out.append(None if sample is None else getattr(sample, figure))
    return out


def churn(passes: list[list[int]]) -> list[Snapshot]:
    """Snapshots where program ``i`` runs ``i`` times more each pass it is loaded in."""
    readings: list[list[ProgramRecord]] = []
    for p, ids in enumerate(passes, start=1):
        readings.append(
            [program(i, run_time_ns=150 * i * i * p, run_cnt=i * p + p * p) for i in ids]
        )
    return snapshots(readings)


def test_the_charts_draw_the_figures_the_views_snapshots_had() -> None:
    assert tuple(attribute for _, attribute, _ in CHARTS) == FIGURES


@settings(max_examples=60, deadline=None)
@given(
    passes=st.lists(st.frozensets(st.integers(1, 6)), min_size=1, max_size=25),
    capacity=st.integers(1, 8),
)
def test_every_series_equals_the_snapshots_of_the_window(
    passes: list[frozenset[int]], capacity: int
) -> None:
    snaps = churn([sorted(ids) for ids in passes])
    history = ChartHistory(capacity)
    for snap in snaps:
        history.add(snap)
    window = snaps[-capacity:]
    assert len(history) == len(window)
    for prog_id in range(1, 8):
        for figure in FIGURES:
            assert history.series(prog_id, figure) == from_snapshots(window, prog_id, figure)
        in_window = [s.get(prog_id) for s in window if s.get(prog_id) is not None]
        seen = history.last_seen(prog_id)
        if not in_window:
            assert seen is None
        else:
            newest = max((s for s in window if s.get(prog_id)), key=lambda s: s.seq)
            assert seen == (newest.get(prog_id), newest.wall_time)
    # Only programs with a pass in the window are kept.
    assert history.programs == len({s.id for snap in window for s in snap.programs})


def test_the_ring_wraps_around_keeping_the_newest_passes() -> None:
    snaps = steady(2, passes=10)
    history = ChartHistory(3)
    for snap in snaps:
        history.add(snap)
    assert len(history) == 3
    assert history.span == pytest.approx(2.0)
    for figure in FIGURES:
        assert history.series(2, figure) == from_snapshots(snaps[-3:], 2, figure)
    assert history.series(2, "events_per_sec") == [20.0, 20.0, 20.0]
    # Three floats per pass and nothing more, however many passes went by.
    track = history._tracks[2]
    assert isinstance(track.values, array) and len(track.values) == 3 * len(FIGURES)


def test_unknown_figures_are_none_not_nan() -> None:
    # The first pass has no rates, an idle program no period average.
    snaps = snapshots([[program(1), program(2, run_cnt=5, run_time_ns=500)], [program(1)]])
    history = ChartHistory.of(snaps)
    assert history.series(1, "period_avg_runtime_ns") == [None, None]
    assert history.series(1, "events_per_sec") == [None, 0.0]
    assert history.series(2, "cpu_percent") == [None, None]  # gone in the second pass
    values = [v for f in FIGURES for p in (1, 2) for v in history.series(p, f)]
    assert not any(isinstance(v, float) and math.isnan(v) for v in values)


def test_a_program_that_went_away_stays_until_its_last_pass_leaves_the_window() -> None:
    snaps = churn([[1, 2], [1, 2], [1], [1], [1]])
    history = ChartHistory(3)
    for snap in snaps[:4]:
        history.add(snap)
    sample, seen_at = history.last_seen(2) or (None, 0.0)
    assert sample is snaps[1].get(2) and seen_at == snaps[1].wall_time
    assert history.series(2, "events_per_sec") == [snaps[1].get(2).events_per_sec, None, None]
    history.add(snaps[4])
    assert history.last_seen(2) is None
    assert history.series(2, "events_per_sec") == [None, None, None]
    assert history.programs == 1


def test_programs_coming_and_going_cost_only_the_passes_they_were_there() -> None:
    history = ChartHistory(120)
    for snap in churn([[p, p + 1000] for p in range(1, 301)]):
        history.add(snap)
    # 2 programs a pass, each there for one pass: the window's 120 passes hold 240.
    assert history.programs == 240
    assert all(len(t.values) == len(FIGURES) for t in history._tracks.values())


def test_a_program_missing_from_a_pass_has_a_gap_there() -> None:
    snaps = churn([[1, 2], [1, 2], [1], [1, 2], [1, 2]])
    history = ChartHistory.of(snaps)
    for figure in FIGURES:
        assert history.series(2, figure) == from_snapshots(snaps, 2, figure)
    assert history.series(2, "events_per_sec")[2] is None


def test_catch_up_adds_each_newer_pass_once() -> None:
    snaps = steady(3, passes=6)
    history = ChartHistory(10)
    history.catch_up(snaps[:2])
    history.catch_up(snaps[:4])  # two of them already in: a frame drawn later
    history.catch_up(snaps[2:6])
    assert len(history) == 6
    assert history.series(3, "cpu_percent") == from_snapshots(snaps, 3, "cpu_percent")


def test_history_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ChartHistory(0)
    with pytest.raises(ValueError):
        LiveOptions(history=0)


def test_an_empty_history_says_so() -> None:
    history = ChartHistory()
    assert len(history) == 0 and history.span == 0.0
    assert window_text(history) == "Charts: no samples yet"
    assert history.series(1, "cpu_percent") == []


def test_a_context_built_from_snapshots_spans_exactly_them() -> None:
    snaps = steady(2, passes=5)
    ctx = RenderContext(snaps[-1], tuple(snaps), 80, 24, Glyphs.ASCII)
    assert len(ctx.charts) == 5 and ctx.charts.capacity == 5
