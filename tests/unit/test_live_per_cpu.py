"""The live view with per-CPU figures: the detail view's split and the Busiest CPU % column."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from live_samples import per_cpu_history, program, snapshots

from otel_bpf.live.context import RenderContext
from otel_bpf.live.format import fmt_percent
from otel_bpf.live.keys import Key
from otel_bpf.live.options import Glyphs
from otel_bpf.live.render_cpus import cpu_rows
from otel_bpf.live.render_detail import cpu_lines_allowed
from otel_bpf.live.render_table import CellCache, cell_text, layout
from otel_bpf.live.sanitize import display_width
from otel_bpf.live.screen import render_screen
from otel_bpf.live.state import (
    COLUMNS,
    Column,
    Mode,
    ViewState,
    apply_key,
    table_columns,
    visible_rows,
)
from otel_bpf.live.terminal import Line
from otel_bpf.snapshot import CpuSample, Snapshot

CPU_ROW = re.compile(r"^cpu (\d+)(?:-(\d+))? ")


def render(
    history: list[Snapshot],
    width: int = 100,
    height: int = 40,
    state: ViewState | None = None,
    per_cpu: bool = True,
) -> list[str]:
    ctx = RenderContext(
        snapshot=history[-1],
        history=tuple(history),
        width=width,
        height=height,
        glyphs=Glyphs.ASCII,
        now=history[-1].wall_time,
        per_cpu=per_cpu,
    )
    state = state or ViewState(mode=Mode.DETAIL, detail_id=10, selected_id=10)
    lines: list[Line] = render_screen(ctx, state)[0]
    assert len(lines) == height
    assert all(len(line.text) == width for line in lines)
    return [line.text for line in lines]


def cpu_lines(text: list[str]) -> list[str]:
    return [t for t in text if CPU_ROW.match(t)]


def covered(text: list[str]) -> list[int]:
    """The CPU numbers the rows stand for, in order."""
    out: list[int] = []
    for line in cpu_lines(text):
        m = CPU_ROW.match(line)
        assert m is not None
        first = int(m.group(1))
        out.extend(range(first, int(m.group(2) or first) + 1))
    return out


def test_one_bar_per_cpu_with_share_runs_and_runtime() -> None:
    text = render(per_cpu_history(cpus=2, hot=1))
    body = "\n".join(text)
    # 500 runs/s at 300 ns on CPU 1: 150 us of each second, 0.015 % of that CPU; none on 0.
    assert "Per CPU, last period: imbalance 2.00 (busiest/mean share)" in body
    assert "bars full at 0.015%" in body
    cpu0, cpu1 = cpu_lines(text)
    assert cpu0.split()[:5] == ["cpu", "0", "0%", "0/s", "-"]
    assert cpu1.split()[:6] == ["cpu", "1", "0.015%", "500/s", "300", "ns"]
    # The bar scales to the busiest CPU: full on CPU 1, empty on CPU 0, same length.
    bar0, bar1 = (re.search(r"\[([# ]+)\]", t) for t in (cpu0, cpu1))
    assert bar0 is not None and bar1 is not None
    assert set(bar1.group(1)) == {"#"} and set(bar0.group(1)) == {" "}
    assert bar0.start() == bar1.start() and bar0.end() == bar1.end()
    assert "grouped" not in body and "groups of" not in body
    # The charts are still there below the split.
    assert body.index("cpu 1 ") < body.index("Avg runtime (ns)  now")


def test_a_single_cpu() -> None:
    text = render(per_cpu_history(cpus=1, hot=0))
    assert "imbalance 1.00" in "\n".join(text)
    (only,) = cpu_lines(text)
    assert only.split()[:6] == ["cpu", "0", "0.015%", "500/s", "300", "ns"]


def test_the_first_period_has_no_figures_not_zeros() -> None:
    text = render(per_cpu_history(passes=1))
    body = "\n".join(text)
    assert "Per CPU: no figures until the first full period" in body
    assert not cpu_lines(text) and "0%" not in body and "imbalance" not in body


def test_a_program_that_ran_nowhere_shows_real_zeros() -> None:
    state = ViewState(mode=Mode.DETAIL, detail_id=12, selected_id=12)
    text = render(per_cpu_history(), state=state)
    assert "Per CPU, last period: no runs" in "\n".join(text)
    assert [t.split()[:5] for t in cpu_lines(text)] == [
        ["cpu", "0", "0%", "0/s", "-"],
        ["cpu", "1", "0%", "0/s", "-"],
    ]


@pytest.mark.parametrize(
    ("cpus", "height", "hot"), [(64, 40, 37), (64, 24, 37), (64, 60, 37), (256, 40, 37), (8, 24, 5)]
)
def test_many_cpus_are_grouped_into_the_rows_there_are(cpus: int, height: int, hot: int) -> None:
    text = render(per_cpu_history(cpus=cpus, hot=hot), height=height)
    body = "\n".join(text)
    rows = cpu_lines(text)
    # Every CPU once, in order, in at most half the room under the facts.
    assert covered(text) == list(range(cpus))
    facts = next(i for i, t in enumerate(text) if t.startswith("Per CPU"))
    assert len(rows) + 2 <= cpu_lines_allowed(height - facts - 1, cpus)
    size = int(re.search(r"in \d+ groups of (\d+)", body).group(1))  # type: ignore[union-attr]
    assert size & (size - 1) == 0  # a power of two: cpu 0-7, not cpu 0-4
    assert f"{cpus} CPUs in {len(rows)} groups of {size}" in body
    # The group holding the hot CPU names it as its busiest, with the CPU's own share; its
    # mean share is 1/size of that; it has all the runs.
    (busy,) = [r for r in rows if f"busiest {hot} " in r]
    assert f"busiest {hot} 0.015%" in busy
    assert busy.split()[2:6] == [fmt_percent(0.015 / size) + "%", "500/s", "300", "ns"]
    # The bars scale to the largest share of a row: the group's mean.
    assert f"bars full at {fmt_percent(0.015 / size)}%" in body
    assert all(r.split()[2:4] == ["0%", "0/s"] for r in rows if r != busy)
    assert "imbalance" in body and "Avg runtime (ns)  now" in body


def test_the_cpus_fit_ungrouped_when_there_is_room() -> None:
    text = render(per_cpu_history(cpus=64, hot=37), height=150)
    assert len(cpu_lines(text)) == 64 and "groups of" not in "\n".join(text)


@given(st.integers(1, 300), st.integers(1, 80))
def test_grouping_fits_any_count_into_any_rows(cpus: int, rows: int) -> None:
    samples = [CpuSample(c, 0, 0, 0, 0.0, None, 0.0) for c in range(cpus)]
    lines, size = cpu_rows(samples, rows)
    assert len(lines) <= rows or size >= cpus  # one group of all when even that is too many
    assert len(lines) == -(-cpus // size)
    assert (size == 1) is (cpus <= rows)


@pytest.mark.parametrize("width", [20, 30, 40, 60, 80])
def test_narrow_widths_keep_label_and_share_whole(width: int) -> None:
    for cpus in (2, 64):
        text = render(per_cpu_history(cpus=cpus, hot=1), width=width, height=30)
        rows = cpu_lines(text)
        assert rows, text
        for row in rows:
            # No figure cut in half: the row ends in a whole figure or a bar.
            assert "~" not in row, row
            assert re.match(r"^cpu \d+(-\d+)? +[\d.]+%", row), row


def test_without_per_cpu_the_detail_view_has_no_split_and_help_says_how() -> None:
    text = render(per_cpu_history(), per_cpu=False)
    assert not cpu_lines(text) and "Per CPU" not in "\n".join(text)
    help_text = "\n".join(render(per_cpu_history(), state=ViewState(mode=Mode.HELP), per_cpu=False))
    assert "--per-cpu" in help_text and "Busiest CPU" not in help_text
    help_text = "\n".join(render(per_cpu_history(), state=ViewState(mode=Mode.HELP)))
    assert "sort by Busiest CPU %" in help_text


def test_a_hostile_name_stays_escaped_in_the_per_cpu_detail() -> None:
    text = "\n".join(render(per_cpu_history(name="\x1b]2;PWN\x07x")))
    assert "\x1b" not in text and "\x07" not in text
    assert "\\x1b]2;PWN\\x07x" in text and "cpu 1 " in text


def test_gone_program_keeps_its_last_split() -> None:
    history = per_cpu_history()
    later = snapshots([[program(11, per_cpu=[(0, 0), (0, 0)])]])
    text = render([*history, *later])
    body = "\n".join(text)
    assert "GONE: program 10" in body and "500/s" in cpu_lines(text)[1]


# -- the table's column ----------------------------------------------------------------


def table(history: list[Snapshot], width: int, per_cpu: bool = True) -> list[str]:
    return render(history, width=width, height=12, state=ViewState(), per_cpu=per_cpu)


def test_busiest_cpu_column_shows_share_and_cpu() -> None:
    text = table(per_cpu_history(), 200)
    header = next(t for t in text if " ID " in t)
    assert "Busiest CPU %" in header
    end = header.index("Busiest CPU %") + len("Busiest CPU %")

    def cell(name: str) -> str:
        return next(t for t in text if name in t)[:end].split()[-1]

    assert cell("otel_pc_hot") == "0.015%@1"
    assert cell("otel_pc_even") == "0.00010%@0"  # even: the lowest-numbered CPU
    assert cell("otel_pc_idle") == "0"  # ran nowhere: no CPU named
    first = table(per_cpu_history(passes=1), 200)
    assert next(t for t in first if "otel_pc_hot" in t)[:end].split()[-1] == "-"
    assert "Busiest" not in "\n".join(table(per_cpu_history(), 200, per_cpu=False))


@pytest.mark.parametrize("width", range(24, 140, 7))
def test_busiest_cpu_column_in_narrow_tables(width: int) -> None:
    text = table(per_cpu_history(cpus=256, hot=137), width)
    header = next(t for t in text if " ID " in t)
    if "MaxCPU%" in header or "Busiest CPU %" in header:
        row = next(t for t in text if "otel_pc_hot" in t)
        assert "0.015%@137" in row
    assert "CPU %" in header and "Name" in header


def test_sorting_by_the_busiest_cpu() -> None:
    snap = per_cpu_history()[-1]
    state = ViewState()
    for _ in range(2):
        state = apply_key(state, "m", [], 5, table_columns(True))[0]
    assert (state.sort_column, state.sort_desc) == (Column.MAX_CPU, False)
    rows = [s.program.name for s in visible_rows(snap.programs, state)]
    assert rows == ["otel_pc_idle", "otel_pc_even", "otel_pc_hot"]
    desc = replace(state, sort_desc=True)
    assert [s.program.name for s in visible_rows(snap.programs, desc)][0] == "otel_pc_hot"
    # Unknown (first sample) last in both directions.
    first = per_cpu_history(passes=1)[-1]
    assert all(s.id for s in visible_rows(first.programs, desc))
    # Without per-CPU figures the key does nothing and the sort cursor skips the column.
    plain = table_columns(False)
    assert apply_key(ViewState(), "m", [], 5, plain)[0] == ViewState()
    cursor = ViewState(mode=Mode.SORT, sort_cursor=Column.CPU)
    assert apply_key(cursor, Key.RIGHT, [], 5, plain)[0].sort_cursor is Column.PROCESS
    assert apply_key(cursor, Key.RIGHT, [], 5, COLUMNS)[0].sort_cursor is Column.MAX_CPU


shares = st.lists(st.lists(st.integers(0, 10**9), min_size=1, max_size=4), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(shares, st.sampled_from([1, 2, 9, 11, 101, 1000]))
def test_busiest_cpu_width_is_exactly_the_widest_cell(runtimes: list[list[int]], cpus: int) -> None:
    # Each program puts its period's run time on a few CPUs spread over the host.
    first, second = [], []
    for i, ns in enumerate(runtimes):
        split = [(0, 0)] * cpus
        for k, value in enumerate(ns):
            split[(k * 7 + i) % cpus] = (value // 100 + (value > 0), value)
        first.append(program(i + 1, per_cpu=[(0, 0)] * cpus))
        second.append(program(i + 1, per_cpu=split))
    snap = snapshots([first, second])[-1]
    cache = CellCache()
    widths = cache.widths(snap, snap.programs, "")
    k = COLUMNS.index(Column.MAX_CPU)
    assert widths[k] == max(display_width(cell_text(s, Column.MAX_CPU)) for s in snap.programs)
    lay = layout(widths, 400, ViewState(), Glyphs.ASCII, COLUMNS)
    assert lay.widths[lay.columns.index(Column.MAX_CPU)] >= widths[k]
