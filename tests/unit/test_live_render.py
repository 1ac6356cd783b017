"""Pure rendering: the table at several widths, the detail view, charts, numbers."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from live_samples import STATS_ON, per_cpu_history, program, snapshots, steady

from otel_bpf.live import charts
from otel_bpf.live.context import RenderContext
from otel_bpf.live.format import fmt_bytes, fmt_ns, fmt_percent, fmt_rate, scaled
from otel_bpf.live.options import Glyphs, LiveOptions
from otel_bpf.live.render_table import DROP_ORDER, LABELS
from otel_bpf.live.screen import render_screen
from otel_bpf.live.state import Column, Mode, ViewState, table_columns
from otel_bpf.live.terminal import Line, Style
from otel_bpf.records import MapRecord, Owner, StatsState, Workload
from otel_bpf.snapshot import Snapshot

EVIL = Owner(pid=4242, comm="\x1b[2J\x1b]0;x\x07", executable="python3", via=("prog",))


def demo_history() -> list[Snapshot]:
    owners = (Owner(pid=1234, comm="python3", executable="python3", via=("prog",)),)
    maps = (MapRecord(9, "array", "otel_demo_cnt", 4, 8, 1, 4096),)
    readings = [
        [
            program(
                10,
                "otel_demo_sock",
                type="socket_filter",
                run_time_ns=300 * p * 500,
                run_cnt=500 * p,
                owners=owners,
                maps=maps,
            ),
            program(
                11,
                "otel_demo_xdp",
                type="xdp",
                run_time_ns=80 * p * 1000,
                run_cnt=1000 * p,
                owners=owners,
            ),
            program(
                12,
                "otel_demo_slow",
                type="cgroup_skb",
                run_time_ns=25_000 * p * 200,
                run_cnt=200 * p,
                owners=(EVIL,),
            ),
            program(3, "", type="cgroup_device", owners=None),
        ]
        for p in range(1, 31)
    ]
    return snapshots(readings)


def render(
    history: list[Snapshot],
    width: int,
    height: int = 24,
    state: ViewState | None = None,
    glyphs: Glyphs = Glyphs.ASCII,
    per_cpu: bool = False,
) -> tuple[list[Line], ViewState, int]:
    ctx = RenderContext(
        snapshot=history[-1] if history else None,
        history=tuple(history),
        width=width,
        height=height,
        glyphs=glyphs,
        host="testhost",
        kernel="6.18.0",
        interval=1.0,
        now=history[-1].wall_time if history else 0.0,
        per_cpu=per_cpu,
    )
    return render_screen(ctx, state or ViewState())


def texts(lines: list[Line]) -> list[str]:
    return [line.text for line in lines]


def column_header(lines: list[Line]) -> str:
    return next(line.text for line in lines if line.style is Style.HEADER)


def row_of(lines: list[Line], needle: str) -> str:
    return next(t for t in texts(lines) if needle in t)


@pytest.mark.parametrize("width", [60, 80, 120, 200])
def test_table_fits_every_width_exactly(width: int) -> None:
    lines, _, _ = render(demo_history(), width)
    assert len(lines) == 24
    assert all(len(t) == width for t in texts(lines))
    header = column_header(lines)
    for must in ("ID", "Name", "CPU %"):
        assert must in header
    assert "otel_demo_sock" in "\n".join(texts(lines))
    assert "rows 1-4 of 4" in "\n".join(texts(lines))


@pytest.mark.parametrize("per_cpu", [False, True])
def test_wide_table_has_every_column_with_full_labels(per_cpu: bool) -> None:
    lines, _, _ = render(demo_history(), 200, per_cpu=per_cpu)
    header = column_header(lines)
    offered = table_columns(per_cpu)
    for column in offered:
        assert LABELS[column][0] in header
    # Columns in the order.
    positions = [header.index(LABELS[c][0]) for c in offered]
    assert positions == sorted(positions)
    assert "CPU % v" in header  # the sort marker
    # The busiest CPU's column only with per-CPU figures.
    assert ("Busiest CPU %" in header) is per_cpu


@pytest.mark.parametrize("per_cpu", [False, True])
def test_narrow_terminals_drop_the_least_important_columns_first(per_cpu: bool) -> None:
    seen: list[set[Column]] = []
    history = per_cpu_history() if per_cpu else demo_history()
    for width in (200, 120, 100, 80, 70, 60, 50, 40, 30):
        lines = render(history, width, per_cpu=per_cpu)[0]
        assert all(len(t) == width for t in texts(lines))
        header = column_header(lines)
        present = {c for c in Column if any(label in header for label in LABELS[c])}
        seen.append(present)
        assert {Column.ID, Column.NAME, Column.CPU} <= present, width
    # Once dropped, a column never comes back at a smaller width, and the order is the
    # documented one.
    order = [c for c in DROP_ORDER if c in table_columns(per_cpu)]
    dropped_order: list[Column] = []
    for present in seen:
        for column in order:
            if column not in present and column not in dropped_order:
                dropped_order.append(column)
    assert dropped_order == order[: len(dropped_order)]
    assert len(dropped_order) >= 3
    assert Column.TOTAL_AVG not in seen[-1] and Column.TOTAL_AVG in seen[0]


def test_numbers_right_aligned_and_process_column() -> None:
    lines, _, _ = render(demo_history(), 200)
    header = column_header(lines)
    events_end = header.index("Events/sec") + len("Events/sec")
    xdp = row_of(lines, "otel_demo_xdp")
    sock = row_of(lines, "otel_demo_sock")
    assert xdp[:events_end].endswith("1,000")
    assert sock[:events_end].endswith("500")
    assert "python3(1234)" in xdp
    assert "\\x1b[2J\\x1b]0;x\\x07(4242)" in row_of(lines, "otel_demo_slow")
    unnamed = row_of(lines, " cgroup_device ")
    # No owners looked up: "-"; no attachments looked up: "?".
    assert unnamed.split()[-2:] == ["-", "?"]


def test_first_sample_shows_unknown_not_zero() -> None:
    lines, _, _ = render(demo_history()[:1], 200)
    row = row_of(lines, "otel_demo_xdp")
    # After the name: period avg, total avg (known from the counters), events/s, CPU %.
    after = row.split("otel_demo_xdp")[1].split()
    assert after[0] == "-" and after[1] == "80" and after[2] == "-" and after[3] == "-"


def test_header_line_facts_and_stats_banner() -> None:
    lines, _, _ = render(demo_history(), 120, state=ViewState(filter_text="demo"))
    top = "\n".join(texts(lines)[:3])
    for fact in (
        "testhost",
        "6.18.0",
        "4 programs",
        "stats on",
        "every 1s",
        "syscall",
        "sort CPU % desc",
        "filter: demo (3 of 4)",
    ):
        assert fact in top, fact
    off = StatsState(ours=False, sysctl=False, others=False)
    history = snapshots([[program(1)]], stats=off)
    top = "\n".join(texts(render(history, 120)[0])[:3])
    assert "stats off" in top and "BPF stats are off" in top
    other = StatsState(ours=False, sysctl=False, others=True)
    top = texts(render(snapshots([[program(1)]], stats=other), 120)[0])[0]
    assert "stats on (by another process)" in top


def test_long_lists_scroll_with_position_indicator() -> None:
    history = steady(50)
    lines, state, page = render(history, 80, 20)
    assert page < 50
    assert f"rows 1-{page} of 50" in "\n".join(texts(lines))
    state = ViewState(selected_id=1)  # lowest CPU: last row
    lines, state, page = render(history, 80, 20, state)
    assert state.scroll == 50 - page
    assert f"rows {51 - page}-50 of 50" in "\n".join(texts(lines))
    selected = [line for line in lines if line.style is Style.SELECTED]
    assert len(selected) == 1 and selected[0].text.startswith("> 1 ")


@pytest.mark.parametrize("mode", list(Mode))
def test_footer_lists_the_keys_of_each_screen(mode: Mode) -> None:
    state = ViewState(mode=mode, detail_id=11)
    lines, _, _ = render(demo_history(), 80, 30, state)
    footer = "\n".join(line.text for line in lines if line.style is Style.DIM)
    expected = {
        Mode.TABLE: ["q: quit", "Enter: detail", "f: filter", "s: sort", "?: help", "c/e/r"],
        Mode.FILTER: ["Esc: clear", "Enter: keep"],
        Mode.SORT: ["Left/Right", "Up: ascending", "Down: descending"],
        Mode.DETAIL: ["back to table", "q: quit"],
        Mode.HELP: ["any key: back"],
    }[mode]
    for item in expected:
        assert item in footer, item
    assert lines[-1].style is Style.DIM


def test_filter_and_sort_modes_show_in_the_table() -> None:
    lines, _, _ = render(demo_history(), 120, state=ViewState(mode=Mode.FILTER, filter_text="xd"))
    assert "filter: xd_" in texts(lines)[1]
    assert [t for t in texts(lines) if "otel_demo" in t] == [row_of(lines, "otel_demo_xdp")]
    lines, _, _ = render(
        demo_history(), 200, state=ViewState(mode=Mode.SORT, sort_cursor=Column.NAME)
    )
    assert "[Name]" in column_header(lines)


def test_help_lists_every_key() -> None:
    lines, _, _ = render(demo_history(), 100, 40, ViewState(mode=Mode.HELP))
    body = "\n".join(texts(lines))
    for key in (
        "Up/Down",
        "PgUp/PgDn",
        "Home/End",
        "Enter",
        "f or /",
        "Esc",
        "s ",
        "q, Ctrl-C",
        "?",
        "Ctrl-Z",
        "sort by CPU %",
        "sort by Events/sec",
        "sort by Name",
    ):
        assert key in body, key


def test_detail_view_info_and_three_charts() -> None:
    state = ViewState(mode=Mode.DETAIL, detail_id=10)
    lines, _, _ = render(demo_history(), 100, 41, state)
    body = "\n".join(texts(lines))
    assert all(len(t) == 100 for t in texts(lines))
    for fact in (
        "ID 10",
        "Type socket_filter",
        "Name otel_demo_sock",
        "Tag 0123456789abcdef",
        "Loaded at 2025-",
        "(1m29s ago)",
        "Verified insns 12",
        "Xlated 96 B",
        "JITed 64 B",
        "Memlock 4.0 KiB",
        "python3(1234)",
        "#9 otel_demo_cnt array",
        "memlock 4.0 KiB",
    ):
        assert fact in body, fact
    assert "Charts: last 30 samples (29s), newest on the right" in body
    assert "Avg runtime (ns)  now 300  mean 300  max 300" in body
    assert "Events/s  now 500  mean 500  max 500" in body
    assert "CPU % (of one core)  now 0.015  mean 0.015  max 0.015" in body
    # Bars drawn in ASCII, the newest sample at the right edge of every plot row.
    plot_rows = [t for t in texts(lines) if "|" in t and not t.startswith("Owners")]
    assert len(plot_rows) >= 3 * 5
    assert all(t.endswith("#") for t in plot_rows)
    assert body.count("#") >= 3 * 29 * 5


def test_detail_view_of_a_gone_program_says_so_and_stays() -> None:
    history = demo_history()
    later = snapshots([[program(11, "otel_demo_xdp")], [program(11, "otel_demo_xdp")]])
    state = ViewState(mode=Mode.DETAIL, detail_id=10, selected_id=10)
    ctx_history = [*history, *later]
    lines, state, _ = render(ctx_history, 100, 40, state)
    body = "\n".join(texts(lines))
    assert "GONE: program 10 (otel_demo_sock) is no longer loaded" in body
    assert "otel_demo_xdp" not in body
    assert state.detail_id == 10
    lines, _, _ = render(later, 100, 40, ViewState(mode=Mode.DETAIL, detail_id=10))
    assert "Program 10: gone" in texts(lines)[0]


def test_evil_process_name_is_escaped_everywhere() -> None:
    for state in (ViewState(), ViewState(mode=Mode.DETAIL, detail_id=12)):
        lines, _, _ = render(demo_history(), 160, 40, state)
        body = "\n".join(texts(lines))
        assert "\x1b" not in body and "\x07" not in body
        assert "\\x1b[2J" in body


def test_waiting_and_empty_states() -> None:
    assert "waiting for the first sample" in "\n".join(texts(render([], 80)[0]))
    empty = snapshots([[]])
    assert "no programs loaded" in "\n".join(texts(render(empty, 80)[0]))
    state = ViewState(filter_text="nomatch")
    assert "no programs match" in "\n".join(texts(render(demo_history(), 80, state=state)[0]))


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=220),
    st.integers(min_value=1, max_value=60),
    st.sampled_from(list(Mode)),
    st.sampled_from(list(Glyphs)),
)
def test_any_size_renders_exact_lines(width: int, height: int, mode: Mode, glyphs: Glyphs) -> None:
    history = demo_history()[:5]
    lines, _, _ = render(history, width, height, ViewState(mode=mode, detail_id=12), glyphs)
    assert len(lines) <= height
    assert all(len(t) == width for t in texts(lines))


def test_chart_glyphs() -> None:
    values: list[float | None] = [None, 0.0, 1.0, 2.0, 4.0, 8.0]
    ascii_rows = charts.bars(values, 6, 2, Glyphs.ASCII, 8.0)
    assert ascii_rows == ["     #", "  .:##"]
    block_rows = charts.bars(values, 6, 1, Glyphs.BLOCK, 8.0)
    assert block_rows == ["  ▁▂▄█"]
    braille = charts.bars([4.0, 8.0, 2.0, 0.0], 2, 1, Glyphs.BRAILLE, 8.0)
    # Cell 1: left sample half high (2 of 4 dots), right one full; cell 2: one dot, none.
    assert braille == ["\u28fc\u2840"]
    assert all(0x2800 <= ord(c) <= 0x28FF for c in braille[0])
    # Newest on the right; only the last `width` samples fit.
    assert charts.bars([8.0] * 3 + [0.0], 2, 1, Glyphs.ASCII, 8.0) == ["# "]


def test_chart_title_and_axis() -> None:
    lines = charts.chart("Events/s", [None, 10.0, 30.0], "rate", 40, 4, Glyphs.ASCII)
    assert lines[0].startswith("Events/s  now 30  mean 20  max 30")
    assert lines[1].startswith("30|") and lines[3].startswith(" 0|")
    assert all(len(line) == 40 for line in lines)
    empty = charts.chart("CPU", [None, None], "percent", 30, 3, Glyphs.ASCII)
    assert empty[0].startswith("CPU  now -  mean -  max -")


def test_number_formats() -> None:
    assert fmt_ns(None) == "-"
    assert fmt_ns(1234567.4) == "1,234,567"
    assert fmt_ns(1234567.4, width=6) == "1.23M"
    assert fmt_rate(0) == "0"
    assert fmt_rate(2.46) == "2.5"
    assert fmt_rate(1000.4) == "1,000"
    assert fmt_percent(None) == "-"
    assert fmt_percent(12.345) == "12.35"
    assert fmt_percent(0.002323) == "0.0023"
    assert fmt_percent(0.0000012) == "0.0000012"
    assert fmt_percent(0.5) == "0.50"
    assert fmt_percent(0.999) == "1.00"
    assert fmt_percent(0.0) == "0"
    assert fmt_bytes(4096) == "4.0 KiB"
    assert fmt_bytes(100) == "100 B"
    assert scaled(999_999) == "1.00M"


def test_glyph_choice() -> None:
    utf8 = {"TERM": "xterm-256color", "LANG": "en_US.UTF-8"}
    assert LiveOptions().resolve_glyphs(encoding="utf-8", environ=utf8) is Glyphs.BLOCK
    assert LiveOptions(ascii=True).resolve_glyphs(encoding="utf-8", environ=utf8) is Glyphs.ASCII
    for env in ({"TERM": "linux", "LANG": "en_US.UTF-8"}, {"TERM": "xterm", "LANG": "C"}):
        assert LiveOptions().resolve_glyphs(encoding="utf-8", environ=env) is Glyphs.ASCII
    assert LiveOptions().resolve_glyphs(encoding="ascii", environ=utf8) is Glyphs.ASCII
    braille = LiveOptions(glyphs=Glyphs.BRAILLE)
    assert braille.resolve_glyphs(encoding="ascii", environ={}) is Glyphs.BRAILLE
    assert STATS_ON.enabled


def test_a_process_holding_prog_and_link_shows_both_ways() -> None:
    held = (
        Owner(pid=77, comm="agent", executable="agent-bin", via=("link", "prog")),
        Owner(pid=78, comm="other", executable="", via=("prog",)),
    )
    history = snapshots([[program(5, "p", owners=held)]])
    body = "\n".join(texts(render(history, 200)[0]))
    assert "agent(77), other(78)" in body
    detail = ViewState(mode=Mode.DETAIL, detail_id=5)
    body = "\n".join(texts(render(history, 200, 30, detail)[0]))
    assert "Owners: agent(77) [agent-bin] via link+prog, other(78) via prog" in body


def test_the_detail_names_each_owners_container_and_pod() -> None:
    container = "05c45fae4a1941581616a248d2611ade321b80a34b2d558edfb7adec56efe055"
    pod = "26988ab4-5b95-45c2-bf6d-29387c585ff9"
    held = (
        Owner(
            7, "agent", "", ("prog",), Workload(f"/kubepods/pod{pod}/{container}", container, pod)
        ),
        Owner(8, "dockerd", "", ("prog",), Workload(f"/docker/{container}", container)),
        Owner(9, "sshd", "", ("prog",), Workload("/system.slice/sshd.service")),
    )
    history = snapshots([[program(5, "p", owners=held)]])
    detail = ViewState(mode=Mode.DETAIL, detail_id=5)
    body = "\n".join(texts(render(history, 200, 30, detail)[0]))
    assert (
        f"Owners: agent(7) via prog container 05c45fae4a19 pod {pod}, "
        "dockerd(8) via prog container 05c45fae4a19, sshd(9) via prog"
    ) in body


@pytest.mark.parametrize("width", [30, 40, 60, 80])
def test_stats_state_stays_in_the_title_at_any_width(width: int) -> None:
    # A cloud host name and a distribution kernel release fill 60 columns on their own.
    history = demo_history()
    ctx = RenderContext(
        snapshot=history[-1],
        history=tuple(history),
        width=width,
        height=24,
        glyphs=Glyphs.ASCII,
        host="ip-10-0-12-34.eu-west-1.compute.internal",
        kernel="6.8.0-1021-aws",
        interval=1.0,
        now=history[-1].wall_time,
    )
    lines, _, _ = render_screen(ctx, ViewState())
    title = lines[0].text
    assert "stats on" in title, title
    assert len(title) == width
    off = StatsState(ours=False, sysctl=False, others=False)
    history = snapshots([[program(1)]], stats=off)
    ctx = dataclasses.replace(ctx, snapshot=history[-1], history=tuple(history))
    assert "stats off" in render_screen(ctx, ViewState())[0][0].text
