"""The main table: header lines, adaptive columns, the selected row, scrolling."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from otel_bpf.live.attached import attached_text
from otel_bpf.live.context import RenderContext, wrap_items
from otel_bpf.live.format import UNKNOWN, fmt_interval, fmt_ns, fmt_percent, fmt_rate
from otel_bpf.live.options import Glyphs
from otel_bpf.live.sanitize import display_width, fit, sanitize
from otel_bpf.live.state import (
    COLUMNS,
    PLAIN_COLUMNS,
    Column,
    Mode,
    ViewState,
    busiest_cpu,
    display_name,
    process_text,
    reconcile,
    table_columns,
    visible_rows,
)
from otel_bpf.live.terminal import Line, Style
from otel_bpf.live.widths import widest
from otel_bpf.records import ProgramRecord
from otel_bpf.snapshot import ProgramSample, Snapshot

LABELS: dict[Column, tuple[str, ...]] = {
    Column.ID: ("ID",),
    Column.TYPE: ("Type",),
    Column.NAME: ("Name",),
    Column.PERIOD_AVG: ("Period Avg Runtime (ns)", "Period Avg (ns)", "Avg ns"),
    Column.TOTAL_AVG: ("Total Avg Runtime (ns)", "Total Avg (ns)", "Tot ns"),
    Column.EVENTS: ("Events/sec", "Ev/s"),
    Column.CPU: ("CPU %",),
    Column.MAX_CPU: ("Busiest CPU %", "MaxCPU%"),
    Column.PROCESS: ("Process",),
    Column.ATTACHED: ("Attached",),
}
"""Header labels, longest first; shorter ones are used when the terminal is narrow."""

SHORT_NAMES: dict[Column, str] = {
    Column.ID: "ID",
    Column.TYPE: "Type",
    Column.NAME: "Name",
    Column.PERIOD_AVG: "Period Avg Runtime",
    Column.TOTAL_AVG: "Total Avg Runtime",
    Column.EVENTS: "Events/sec",
    Column.CPU: "CPU %",
    Column.MAX_CPU: "Busiest CPU %",
    Column.PROCESS: "Process",
    Column.ATTACHED: "Attached",
}
"""Column names in the status line (``sort: CPU % desc``)."""

DROP_ORDER: tuple[Column, ...] = (
    Column.TOTAL_AVG,
    Column.TYPE,
    Column.ATTACHED,
    Column.PROCESS,
    Column.PERIOD_AVG,
    Column.MAX_CPU,
    Column.EVENTS,
)
"""On a narrow terminal these columns go first, in this order (ID, Name, CPU % stay)."""

FLEXIBLE_MIN = {Column.NAME: 16, Column.PROCESS: 10, Column.TYPE: 10, Column.ATTACHED: 10}
"""Text columns may be cut (ending in ``~``) down to these widths."""

MARKER = "> "
"""Prefix of the selected row, so the selection shows even without colours."""
GAP = " "

SORT_ARROWS = {Glyphs.ASCII: (" ^", " v")}
UNICODE_ARROWS = ("\u25b2", "\u25bc")


def sort_arrow(glyphs: Glyphs, desc: bool) -> str:
    """The header's sort marker: ``^``/``v`` in ASCII, triangles in Unicode."""
    up, down = SORT_ARROWS.get(glyphs, UNICODE_ARROWS)
    return down if desc else up


def cell_text(sample: ProgramSample, column: Column) -> str:
    """A cell's text (sanitised)."""
    p = sample.program
    if column is Column.ID:
        return str(p.id)
    if column is Column.TYPE:
        return sanitize(p.type)
    if column is Column.NAME:
        return display_name(p)
    if column is Column.PROCESS:
        return process_text(p)
    if column is Column.ATTACHED:
        return attached_text(p)
    if column is Column.PERIOD_AVG:
        return fmt_ns(sample.period_avg_runtime_ns)
    if column is Column.TOTAL_AVG:
        return fmt_ns(sample.total_avg_runtime_ns)
    if column is Column.EVENTS:
        return fmt_rate(sample.events_per_sec)
    if column is Column.MAX_CPU:
        return max_cpu_text(sample)
    return fmt_percent(sample.cpu_percent)


def max_cpu_text(sample: ProgramSample) -> str:
    """The busiest CPU's share of its time over the period and its number: ``37.00%@1``;
    ``0`` when the program ran nowhere, ``-`` before the first full period."""
    top = busiest_cpu(sample)
    if top is None:
        return UNKNOWN
    if not top.cpu_utilization:
        return "0"
    return f"{fmt_percent(top.cpu_utilization * 100)}%@{top.cpu}"


def widest_max_cpu(rows: Iterable[ProgramSample]) -> int:
    """The widest :func:`max_cpu_text` of ``rows``, formatting only a few shares per
    number of digits of the busiest CPU (:func:`widths.widest`, exact)."""
    by_digits: dict[int, list[float]] = {}
    for sample in rows:
        top = busiest_cpu(sample)
        if top is not None and top.cpu_utilization:
            by_digits.setdefault(len(str(top.cpu)), []).append(top.cpu_utilization * 100)
    return max((widest(v, "percent") + 2 + d for d, v in by_digits.items()), default=1)


TEXT_COLUMNS: tuple[Column, ...] = tuple(c for c in COLUMNS if not c.numeric)
"""The columns whose text comes from the program record (id, type, name, process,
attached)."""

_MAX_CPU_AT = COLUMNS.index(Column.MAX_CPU)

FIGURES: tuple[tuple[Column, str, str], ...] = (
    (Column.PERIOD_AVG, "period_avg_runtime_ns", "ns"),
    (Column.TOTAL_AVG, "total_avg_runtime_ns", "ns"),
    (Column.EVENTS, "events_per_sec", "rate"),
    (Column.CPU, "cpu_percent", "percent"),
)
"""Each number column, the sample attribute it shows and its kind (:mod:`widths`)."""

COLUMN_INDEX: dict[Column, int] = {c: i for i, c in enumerate(COLUMNS)}
_TEXT_AT = tuple(COLUMN_INDEX[c] for c in TEXT_COLUMNS)
_FIGURE_AT = tuple((COLUMN_INDEX[c], attrgetter(attr), kind) for c, attr, kind in FIGURES)
_FORMAT = {"ns": fmt_ns, "rate": fmt_rate, "percent": fmt_percent}


def _same_text(before: ProgramRecord, now: ProgramRecord) -> bool:
    """Whether the text columns (id, type, name, process, attached) of two records read the
    same."""
    return before is now or (
        before.id == now.id
        and before.type == now.type
        and before.name == now.name
        and before.owners == now.owners
        and before.attachments == now.attachments
    )


class CellCache:
    """Cell texts and column widths of the newest snapshot, kept between frames.

    Formatting every cell of thousands of programs to size the columns was most of a
    frame's cost, and only a page of rows is on screen.  So the figures are formatted only
    for the rows drawn (:meth:`row`, kept while the snapshot is the same one), and the
    columns are sized from the figures' extreme values (:func:`widths.widest`, exact).  The
    text cells (id, type, name, process, attached) and their widths are kept per program while its
    record reads the same, so names and owners are not formatted again every pass.
    """

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        # id -> (record, text cells in TEXT_COLUMNS order, their display widths)
        self._text: dict[int, tuple[ProgramRecord, tuple[str, ...], tuple[int, ...]]] = {}
        self._rows: dict[int, list[str]] = {}
        self._widths_of: tuple[Snapshot | None, str] = (None, "")
        self._widths: list[int] = [1] * len(COLUMNS)

    def _use(self, snapshot: Snapshot) -> None:
        if snapshot is self._snapshot:
            return
        self._snapshot = snapshot
        self._rows = {}
        old, text = self._text, {}
        for sample in snapshot.programs:
            record = sample.program
            prior = old.get(record.id)
            if prior is None or not _same_text(prior[0], record):
                cells = tuple(cell_text(sample, c) for c in TEXT_COLUMNS)
                prior = (record, cells, tuple(display_width(t) for t in cells))
            text[record.id] = prior
        self._text = text

    def row(self, snapshot: Snapshot, sample: ProgramSample) -> list[str]:
        """The cells of one of ``snapshot``'s samples, in :data:`COLUMNS` order."""
        self._use(snapshot)
        cells = self._rows.get(sample.id)
        if cells is None:
            cells = [""] * len(COLUMNS)
            for i, text in zip(_TEXT_AT, self._text[sample.id][1], strict=True):
                cells[i] = text
            for i, get, kind in _FIGURE_AT:
                cells[i] = _FORMAT[kind](get(sample))
            cells[_MAX_CPU_AT] = max_cpu_text(sample)
            self._rows[sample.id] = cells
        return cells

    def widths(self, snapshot: Snapshot, rows: Sequence[ProgramSample], key: str) -> list[int]:
        """The widest cell of each column (:data:`COLUMNS` order) over ``rows``, which are
        samples of ``snapshot`` chosen by ``key`` (the filter text): the same snapshot and
        key give the same widths without looking at the rows again."""
        self._use(snapshot)
        if self._widths_of[0] is snapshot and self._widths_of[1] == key:
            return self._widths
        out = [1] * len(COLUMNS)
        if rows:
            text = [self._text[s.id][2] for s in rows]
            for k, i in enumerate(_TEXT_AT):
                out[i] = max(t[k] for t in text)
            for i, get, kind in _FIGURE_AT:
                out[i] = widest(map(get, rows), kind)
            out[_MAX_CPU_AT] = widest_max_cpu(rows)
        self._widths_of, self._widths = (snapshot, key), out
        return out


_cache = CellCache()


@dataclass(frozen=True, slots=True)
class Layout:
    """The columns that fit, their widths and header labels."""

    columns: tuple[Column, ...]
    widths: tuple[int, ...]
    labels: tuple[str, ...]


def header_label(column: Column, tier: int, state: ViewState, glyphs: Glyphs) -> str:
    """A column's header text at a label tier, with the sort marker and sort cursor."""
    labels = LABELS[column]
    label = labels[min(tier, len(labels) - 1)]
    if column is state.sort_column:
        label += sort_arrow(glyphs, state.sort_desc)
    if state.mode is Mode.SORT and column is state.sort_cursor:
        label = f"[{label}]"
    return label


def layout(
    content_widths: Sequence[int],
    width: int,
    state: ViewState,
    glyphs: Glyphs,
    offered: Sequence[Column] = PLAIN_COLUMNS,
) -> Layout:
    """Choose columns and widths for ``width`` terminal columns, given the display width of
    each column's widest cell (in :data:`COLUMNS` order), among the ``offered`` columns
    (:func:`~otel_bpf.live.state.table_columns`).

    Columns are dropped in :data:`DROP_ORDER` until the rest fit with their shortest
    labels and the text columns at their minimum widths.  Within that set the longest
    labels that leave every cell whole are used (else the shortest), and the room left goes
    to the Name, then the Type, then the Process, then the Attached column.
    """
    content = dict(zip(COLUMNS, content_widths, strict=True))
    usable = width - len(MARKER)
    gaps = len(GAP)
    for dropped in range(len(DROP_ORDER) + 1):
        if 0 < dropped < len(DROP_ORDER) and DROP_ORDER[dropped - 1] not in offered:
            continue  # the same columns as the step before
        cols = tuple(c for c in offered if c not in DROP_ORDER[:dropped])
        tiers = []
        for tier in range(3):
            labels = tuple(header_label(c, tier, state, glyphs) for c in cols)
            pairs = zip(cols, labels, strict=True)
            wanted = [max(content[c], display_width(lb)) for c, lb in pairs]
            minimum = [
                min(w, max(FLEXIBLE_MIN[c], display_width(lb))) if c in FLEXIBLE_MIN else w
                for c, w, lb in zip(cols, wanted, labels, strict=True)
            ]
            tiers.append((labels, wanted, minimum))
        # Longest labels with which every cell fits whole; else the shortest labels, so the
        # text columns get as much room as there is.
        chosen = next((t for t in tiers if sum(t[1]) + gaps * (len(cols) - 1) <= usable), None)
        if chosen is None:
            last = tiers[-1]
            fits = sum(last[2]) + gaps * (len(cols) - 1) <= usable
            if not fits and dropped < len(DROP_ORDER):
                continue
            chosen = last
        labels, wanted, minimum = chosen
        widths = list(minimum)
        spare = usable - sum(minimum) - gaps * (len(cols) - 1)
        for flex in (Column.NAME, Column.TYPE, Column.PROCESS, Column.ATTACHED):
            if flex in cols and spare > 0:
                k = cols.index(flex)
                extra = min(spare, wanted[k] - widths[k])
                widths[k] += extra
                spare -= extra
        return Layout(cols, tuple(widths), labels)
    raise AssertionError("unreachable: the last layout is always taken")


def format_row(cells: Sequence[str], lay: Layout) -> str:
    """The cells of ``lay.columns`` aligned into one line (without the marker)."""
    parts = []
    for column, width, text in zip(lay.columns, lay.widths, cells, strict=True):
        parts.append(fit(text, width, align=">" if column.numeric else "<"))
    return GAP.join(parts)


TITLE_KEEP = 99
"""Rank of the title item that is never dropped: the stats state, the one thing the view
promises about the host (stats on or off decides whether any runtime figure means anything)."""


def title_line(items: Sequence[tuple[str, int]], width: int) -> str:
    """The title: ``(text, rank)`` items joined in order; while too wide for ``width`` the
    lowest-ranked item goes first, and when only the kept item is left it comes first so
    a cut takes its end, never the whole of it."""
    kept = [(text, rank) for text, rank in items if text]
    while len(kept) > 1 and display_width("  ".join(t for t, _ in kept)) > width:
        kept.remove(min(kept, key=lambda item: item[1]))
    return "  ".join(t for t, _ in kept)


def header_lines(ctx: RenderContext, state: ViewState, shown: int) -> list[Line]:
    """The status lines above the table."""
    snap = ctx.snapshot
    width = ctx.width
    total = len(snap.programs) if snap else 0
    stats = snap.stats.describe() if snap else "-"
    path = snap.sampling_path if snap else "-"
    first = title_line(
        [
            ("bpftop-otel", 4),
            (f"host {sanitize(ctx.host)}" if ctx.host else "", 1),
            (f"kernel {sanitize(ctx.kernel)}" if ctx.kernel else "", 0),
            (f"{total} programs", 5),
            (f"stats {stats}", TITLE_KEEP),
            (f"every {fmt_interval(ctx.interval)}", 3),
            (f"path {sanitize(path)}", 2),
        ],
        width,
    )
    direction = "desc" if state.sort_desc else "asc"
    second = [f"sort {SHORT_NAMES[state.sort_column]} {direction}"]
    if state.mode is Mode.FILTER:
        second.append(f"filter: {sanitize(state.filter_text)}_")
    elif state.filter_text:
        second.append(f"filter: {sanitize(state.filter_text)} ({shown} of {total})")
    else:
        second.append("filter: none")
    if snap and snap.errors:
        second.append(f"{len(snap.errors)} read errors")
    lines = [Line(fit(first, width), Style.TITLE)]
    lines.append(Line(fit("  ".join(second), width)))
    if snap is not None and not snap.stats.enabled:
        warn = "BPF stats are off: runtimes and CPU % are not being counted"
        lines.append(Line(fit(warn, width), Style.WARN))
    return lines


def footer_items(mode: Mode, per_cpu: bool = False) -> list[str]:
    """The keys of a screen, as the footer lists them (``per_cpu``: the table offers the
    Busiest CPU % column)."""
    if mode is Mode.FILTER:
        return [
            "type: filter name/type/process/attach point",
            "Backspace: delete",
            "Enter: keep",
            "Esc: clear",
            "Up/Down: move",
            "Ctrl-C: quit",
        ]
    if mode is Mode.SORT:
        return [
            "Left/Right: column",
            "Up: ascending",
            "Down: descending",
            "Enter: toggle",
            "Backspace: default",
            "Esc: back",
            "q: quit",
        ]
    if mode is Mode.DETAIL:
        return ["Esc/Enter: back to table", "?: help", "q: quit"]
    if mode is Mode.HELP:
        return ["any key: back", "q: quit"]
    return [
        "q: quit",
        "Up/Down j/k: move",
        "PgUp/PgDn Home/End",
        "Enter: detail",
        "f: filter",
        "s: sort",
        "c/e/r/t/i/n/p/m: sort cpu/events/run/total/id/name/proc/maxcpu"
        if per_cpu
        else "c/e/r/t/i/n/p: sort cpu/events/run/total/id/name/proc",
        "?: help",
    ]


def footer_lines(mode: Mode, width: int, max_lines: int = 3, per_cpu: bool = False) -> list[Line]:
    """The footer: the current screen's keys, wrapped."""
    lines = wrap_items(footer_items(mode, per_cpu), width)[:max_lines]
    return [Line(fit(text, width), Style.DIM) for text in lines]


def render_table(ctx: RenderContext, state: ViewState) -> tuple[list[Line], ViewState, int]:
    """The table screen: ``(lines, reconciled state, rows per page)``."""
    width, height = ctx.width, ctx.height
    samples = ctx.snapshot.programs if ctx.snapshot else ()
    rows = visible_rows(samples, state)
    head = header_lines(ctx, state, len(rows))
    foot = footer_lines(state.mode, width, per_cpu=ctx.per_cpu)
    page = max(height - len(head) - len(foot) - 2, 1)  # column header + position line
    ids = [s.id for s in rows]
    state = reconcile(state, ids, page)
    snap = ctx.snapshot
    content = (
        _cache.widths(snap, rows, state.filter_text) if snap is not None else [1] * len(COLUMNS)
    )
    lay = layout(content, width, state, ctx.glyphs, table_columns(ctx.per_cpu))
    shown_at = [COLUMN_INDEX[c] for c in lay.columns]
    lines = list(head)
    header = " " * len(MARKER) + format_row(lay.labels, lay)
    lines.append(Line(fit(header, width), Style.HEADER))
    if ctx.snapshot is None:
        lines.append(Line(fit("  waiting for the first sample...", width)))
    elif not rows:
        none = "  no programs match the filter" if state.filter_text else "  no programs loaded"
        lines.append(Line(fit(none, width)))
    for i in range(state.scroll, min(state.scroll + page, len(rows))):
        assert snap is not None  # rows come from the snapshot
        cells = _cache.row(snap, rows[i])
        picked = [cells[k] for k in shown_at]
        selected = rows[i].id == state.selected_id
        text = (MARKER if selected else " " * len(MARKER)) + format_row(picked, lay)
        lines.append(Line(fit(text, width), Style.SELECTED if selected else Style.NORMAL))
    body_end = len(head) + 1 + page
    while len(lines) < body_end:
        lines.append(Line(" " * width))
    lines = lines[:body_end]
    lines.append(Line(fit(position_text(state.scroll, page, len(rows)), width, align=">")))
    lines.extend(foot)
    return lines[:height], state, page


def position_text(scroll: int, page: int, count: int) -> str:
    """The scroll position indicator: ``rows 21-40 of 97``."""
    if count == 0:
        return "rows 0 of 0"
    last = min(scroll + page, count)
    return f"rows {scroll + 1}-{last} of {count}"
