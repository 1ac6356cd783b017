"""The table's cell cache reuses texts across snapshots but always shows what a fresh
formatting of the newest snapshot would."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import example, given, settings
from hypothesis import strategies as st
from live_samples import program, snapshots

from otel_bpf.live.options import Glyphs
from otel_bpf.live.render_table import CellCache, cell_text, layout
from otel_bpf.live.sanitize import display_width
from otel_bpf.live.state import COLUMNS, ViewState
from otel_bpf.live.widths import KINDS, widest
from otel_bpf.records import Owner, ProgramRecord
from otel_bpf.snapshot import ProgramSample

OWNERS = (
    (),
    None,
    (Owner(pid=7, comm="agent", executable="agent", via=("prog",)),),
    (Owner(pid=8, comm="\x1b[2Jx", executable="", via=("link",)),),
)

reading = st.tuples(
    st.integers(1, 5),  # id
    st.sampled_from(["", "a", "b\x1b[0m"]),  # name
    st.sampled_from(["xdp", "kprobe"]),  # type
    st.integers(0, 3),  # owners
    st.integers(0, 3),  # runs added this pass
)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.lists(reading, max_size=5, unique_by=lambda r: r[0]), min_size=1, max_size=8))
def test_cached_cells_equal_freshly_formatted_ones(passes: list[list[tuple]]) -> None:
    runs: dict[int, int] = {}
    readings: list[list[ProgramRecord]] = []
    for records in passes:
        row = []
        for prog_id, name, kind, owners, added in records:
            runs[prog_id] = runs.get(prog_id, 0) + added
            n = runs[prog_id]
            row.append(
                program(
                    prog_id,
                    name,
                    type=kind,
                    run_cnt=n,
                    run_time_ns=n * (100 + prog_id),
                    owners=OWNERS[owners],
                )
            )
        readings.append(row)
    cache = CellCache()
    for snap in snapshots(readings):
        fresh = {s.id: [cell_text(s, c) for c in COLUMNS] for s in snap.programs}
        assert {s.id: cache.row(snap, s) for s in snap.programs} == fresh
        widest = [
            max((display_width(v[i]) for v in fresh.values()), default=1)
            for i in range(len(COLUMNS))
        ]
        assert cache.widths(snap, snap.programs, "") == widest


figure = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(-20, 20),
    st.floats(-1e-3, 1e-3),
    st.sampled_from([0.0, 9.95, 9.96, 9.949999, -9.95, 0.995, 0.99499, 1e-10, 999.5, 999_999.5]),
    st.integers(-(10**12), 10**12).map(float),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(figure, max_size=30), st.sampled_from(sorted(KINDS)))
# The widest text is not that of the largest |value| in these: "10.0" vs "12", "0.00001"
# vs "5.00".
@example([0.5, 9.96, 12.0], "rate")
@example([-0.5, -9.97, -12.0], "rate")
@example([-5.0, 1e-5, 0.5], "percent")
@example([5.0, -1e-5, -0.5], "percent")
def test_widest_is_the_widest_formatted_figure(values: list[float | None], kind: str) -> None:
    fmt = KINDS[kind][0]
    assert widest(values, kind) == max((len(fmt(v)) for v in values), default=1)


sample_figures = st.tuples(figure, figure, figure, figure)


@settings(max_examples=100, deadline=None)
@given(st.lists(sample_figures, min_size=1, max_size=12), st.integers(1, 12), st.integers(0, 11))
def test_column_widths_fit_every_visible_cell(
    figures: list[tuple[float | None, ...]], height: int, start: int
) -> None:
    # Any page of the rows: every cell drawn fits its column whole, and each column is no
    # wider than the widest cell (or header) of all rows, as when every row was formatted.
    samples = [
        ProgramSample(program(i + 1), *f, cpu_utilization=None) for i, f in enumerate(figures)
    ]
    snap = snapshots([[s.program for s in samples]])[0]
    snap = replace(snap, programs=tuple(samples))
    cache = CellCache()
    widths = cache.widths(snap, samples, "")
    lay = layout(widths, 400, ViewState(), Glyphs.ASCII)
    page = samples[start : start + height]
    for sample in page:
        cells = cache.row(snap, sample)
        for column, width in zip(lay.columns, lay.widths, strict=True):
            assert display_width(cells[COLUMNS.index(column)]) <= width
    for i in range(len(COLUMNS)):
        assert widths[i] == max(display_width(cell_text(s, COLUMNS[i])) for s in samples)
