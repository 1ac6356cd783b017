"""The table's cell cache reuses texts across snapshots but always shows what a fresh
formatting of the newest snapshot would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from live_samples import program, snapshots

from otel_bpf.live.render_table import CellCache, cell_text
from otel_bpf.live.sanitize import display_width
from otel_bpf.live.state import COLUMNS
from otel_bpf.records import Owner, ProgramRecord

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
        assert cache.cells(snap) == fresh
        assert cache.widths(snap) == {k: [display_width(t) for t in v] for k, v in fresh.items()}
