"""View state: selection by program id, filter and sort at once, the detail view's program."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st
from live_samples import program, snapshots, steady

from otel_bpf.live.keys import Key, KeyEvent
from otel_bpf.live.state import (
    Action,
    Column,
    Mode,
    ViewState,
    apply_key,
    matches,
    reconcile,
    sort_value,
    visible_rows,
)
from otel_bpf.records import Owner
from otel_bpf.snapshot import ProgramSample


def ids_of(rows: list[ProgramSample]) -> list[int]:
    return [s.id for s in rows]


def press(state: ViewState, keys: list[KeyEvent], ids: list[int], page: int = 5) -> ViewState:
    for key in keys:
        state, action = apply_key(state, key, ids, page)
        assert action is Action.NONE
    return state


def test_default_sort_is_cpu_descending_with_unknown_last() -> None:
    first, second = steady(4)
    assert ids_of(visible_rows(second.programs, ViewState())) == [4, 3, 2, 1]
    # First sample: CPU % unknown for all, so id order.
    assert ids_of(visible_rows(first.programs, ViewState())) == [1, 2, 3, 4]


def test_selection_follows_the_program_across_resort_and_refresh() -> None:
    first, second = steady(4)
    state = reconcile(ViewState(), ids_of(visible_rows(first.programs, ViewState())), 10)
    assert state.selected_id == 1  # top row of the first sample
    ids = ids_of(visible_rows(second.programs, state))
    state = reconcile(state, ids, 10)
    assert ids == [4, 3, 2, 1]
    assert state.selected_id == 1 and state.selected_index == 3  # moved with its program
    state = press(state, ["k"], ids)
    assert state.selected_id == 2
    state = press(state, ["i"], ids)  # sort by id: program 2 stays selected
    assert state.sort_column is Column.ID and not state.sort_desc
    ids = ids_of(visible_rows(second.programs, state))
    assert ids == [1, 2, 3, 4]
    assert reconcile(state, ids, 10).selected_id == 2


def test_gone_program_leaves_the_selection_at_the_same_height() -> None:
    state = reconcile(ViewState(selected_id=3), [1, 2, 3, 4], 10)
    assert state.selected_index == 2
    state = reconcile(state, [1, 2, 4], 10)
    assert state.selected_id == 4
    assert reconcile(state, [], 10).selected_id is None


def test_movement_keys() -> None:
    ids = list(range(1, 21))
    state = reconcile(ViewState(), ids, 5)
    assert press(state, [Key.DOWN, "j", "j"], ids).selected_id == 4
    state = press(state, [Key.PAGE_DOWN], ids)
    assert state.selected_id == 6 and state.scroll == 1
    assert press(state, [Key.PAGE_UP, Key.PAGE_UP], ids).selected_id == 1
    end = press(state, [Key.END], ids)
    assert end.selected_id == 20 and end.scroll == 15
    assert press(end, [Key.HOME], ids).selected_id == 1
    assert press(end, ["g"], ids).scroll == 0
    assert press(end, [Key.DOWN], ids).selected_id == 20  # no wrap at the ends
    assert press(state, [Key.UP, "k", "k", "k", "k", "k", "k"], ids).selected_id == 1


def test_filter_applies_as_typed_and_escape_clears() -> None:
    evil = (Owner(pid=77, comm="agentd", executable="agentd", via=("prog",)),)
    snap = snapshots(
        [
            [
                program(1, "otel_demo_sock", type="socket_filter"),
                program(2, "otel_demo_xdp", type="xdp"),
                program(3, "cgroup_dev", type="cgroup_device", owners=evil),
            ]
        ]
    )[0]
    state = press(ViewState(), ["f"], [])
    assert state.mode is Mode.FILTER
    state = press(state, list("XDP"), [])
    assert ids_of(visible_rows(snap.programs, state)) == [2]  # by type, any case
    state = press(replace(state, filter_text=""), list("demo"), [])
    assert ids_of(visible_rows(snap.programs, state)) == [1, 2]  # by name
    state = press(replace(state, filter_text=""), list("agent"), [])
    assert ids_of(visible_rows(snap.programs, state)) == [3]  # by process
    state = press(replace(state, filter_text=""), list("(77)"), [])
    assert ids_of(visible_rows(snap.programs, state)) == [3]  # by pid as shown
    state = press(state, [Key.BACKSPACE, Key.BACKSPACE, Key.BACKSPACE, Key.BACKSPACE], [])
    assert state.filter_text == ""
    state = press(state, list("q"), [])  # q is text while filtering
    assert state.filter_text == "q" and state.mode is Mode.FILTER
    kept = press(state, [Key.ENTER], [])
    assert kept.mode is Mode.TABLE and kept.filter_text == "q"
    assert press(kept, [Key.ESCAPE], []).filter_text == ""  # Esc on the table clears too
    cleared = press(state, [Key.ESCAPE], [])
    assert cleared.mode is Mode.TABLE and cleared.filter_text == ""


def test_sort_mode_arrows_and_direct_keys() -> None:
    state = press(ViewState(), ["s"], [])
    assert state.mode is Mode.SORT and state.sort_cursor is Column.CPU
    state = press(state, [Key.RIGHT], [])
    assert state.sort_cursor is Column.PROCESS
    state = press(state, [Key.RIGHT, Key.RIGHT], [])
    assert state.sort_cursor is Column.ID  # wraps, past Attached
    state = press(state, [Key.LEFT] * 5, [])
    assert state.sort_cursor is Column.TOTAL_AVG
    state = press(state, [Key.UP], [])
    assert (state.sort_column, state.sort_desc, state.mode) == (Column.TOTAL_AVG, False, Mode.SORT)
    state = press(state, [Key.DOWN], [])
    assert state.sort_desc
    state = press(state, [Key.BACKSPACE], [])
    assert (state.sort_column, state.sort_desc) == (Column.CPU, True)
    state = press(state, [Key.ESCAPE], [])
    assert state.mode is Mode.TABLE
    for key, column, desc in [
        ("e", Column.EVENTS, True),
        ("r", Column.PERIOD_AVG, True),
        ("t", Column.TOTAL_AVG, True),
        ("n", Column.NAME, False),
        ("p", Column.PROCESS, False),
        ("i", Column.ID, False),
        ("c", Column.CPU, True),
    ]:
        state = press(state, [key], [])
        assert (state.sort_column, state.sort_desc) == (column, desc)
    assert press(state, ["c"], []).sort_desc is False  # again: reversed


def test_sorts_by_every_column_both_ways() -> None:
    owners = {
        i: (Owner(pid=i, comm=c, executable=c, via=("prog",)),) for i, c in [(1, "b"), (2, "a")]
    }
    first, second = snapshots(
        [
            [program(i, n, owners=owners.get(i, ())) for i, n in [(1, "zz"), (2, "aa"), (3, "mm")]],
            [
                program(1, "zz", run_time_ns=900, run_cnt=3, owners=owners[1]),
                program(2, "aa", run_time_ns=100, run_cnt=1, owners=owners[2]),
                program(3, "mm", run_time_ns=0, run_cnt=0),
            ],
        ]
    )
    expect = {
        Column.ID: [1, 2, 3],
        Column.NAME: [2, 3, 1],
        Column.PROCESS: [2, 1, 3],  # program 3 has no owner: last
        Column.EVENTS: [3, 2, 1],  # 0, 1, 3 runs/s
        Column.PERIOD_AVG: [2, 1, 3],  # 100, 300, unknown (no runs)
    }
    for column, ascending in expect.items():
        asc = ViewState(sort_column=column, sort_desc=False)
        assert ids_of(visible_rows(second.programs, asc)) == ascending, column
        desc = replace(asc, sort_desc=True)
        rows = ids_of(visible_rows(second.programs, desc))
        known = [i for i in ascending if not (column is Column.PERIOD_AVG and i == 3)]
        known = known if column is not Column.PROCESS else [2, 1]
        assert rows[: len(known)] == list(reversed(known)), column


def test_detail_view_keeps_its_program_and_back_keys() -> None:
    ids = [1, 2, 3]
    state = reconcile(ViewState(selected_id=2), ids, 5)
    state = press(state, [Key.ENTER], ids)
    assert state.mode is Mode.DETAIL and state.detail_id == 2
    # The program goes and the table's selection moves on; the detail view does not.
    state = reconcile(state, [1, 3], 5)
    assert state.selected_id == 3 and state.detail_id == 2
    for back in (Key.ESCAPE, Key.ENTER, Key.BACKSPACE):
        assert press(state, [back], ids).mode is Mode.TABLE
    assert press(state, ["j"], ids).detail_id == 2  # no jumping to another program


def test_quit_help_and_repaint() -> None:
    for mode in Mode:
        assert apply_key(ViewState(mode=mode), Key.CTRL_C, [], 5)[1] is Action.QUIT
        expected = Action.NONE if mode is Mode.FILTER else Action.QUIT
        assert apply_key(ViewState(mode=mode), "q", [], 5)[1] is expected
    assert apply_key(ViewState(), Key.CTRL_L, [], 5)[1] is Action.REDRAW
    state = press(ViewState(mode=Mode.DETAIL, detail_id=1), ["?"], [])
    assert state.mode is Mode.HELP
    assert press(state, ["x"], []).mode is Mode.DETAIL  # any key goes back
    assert press(ViewState(), [Key.ENTER], []).mode is Mode.TABLE  # nothing selected


def _reference_rows(samples: list[ProgramSample], state: ViewState) -> list[ProgramSample]:
    # The rows as the view first defined them: filter, id order, then a stable sort by the
    # column's value with unknown values last.
    rows = sorted((s for s in samples if matches(s, state.filter_text)), key=lambda s: s.id)
    known = [s for s in rows if sort_value(s, state.sort_column) is not None]
    unknown = [s for s in rows if sort_value(s, state.sort_column) is None]
    known.sort(key=lambda s: sort_value(s, state.sort_column), reverse=state.sort_desc)
    return known + unknown


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 40), st.sampled_from(["a", "b", "ab"]), st.integers(0, 3)),
        max_size=20,
        unique_by=lambda t: t[0],
    ),
    st.sampled_from(list(Column)),
    st.booleans(),
    st.sampled_from(["", "a", "b", "x"]),
)
def test_visible_rows_filter_then_sort_stably(
    specs: list[tuple[int, str, int]], column: Column, desc: bool, needle: str
) -> None:
    figures = (None, 0.0, 1.5, 1.5)
    samples = [
        ProgramSample(program(i, name), figures[k], figures[3 - k], figures[k], figures[k], None)
        for i, name, k in reversed(specs)
    ]
    state = ViewState(sort_column=column, sort_desc=desc, filter_text=needle)
    assert visible_rows(samples, state) == _reference_rows(samples, state)
