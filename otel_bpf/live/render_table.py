"""The main table: header lines, adaptive columns, the selected row, scrolling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from otel_bpf.live.context import RenderContext, wrap_items
from otel_bpf.live.format import fmt_interval, fmt_ns, fmt_percent, fmt_rate
from otel_bpf.live.options import Glyphs
from otel_bpf.live.sanitize import display_width, fit, sanitize
from otel_bpf.live.state import (
    COLUMNS,
    Column,
    Mode,
    ViewState,
    display_name,
    process_text,
    reconcile,
    visible_rows,
)
from otel_bpf.live.terminal import Line, Style
from otel_bpf.snapshot import ProgramSample, Snapshot

LABELS: dict[Column, tuple[str, ...]] = {
    Column.ID: ("ID",),
    Column.TYPE: ("Type",),
    Column.NAME: ("Name",),
    Column.PERIOD_AVG: ("Period Avg Runtime (ns)", "Period Avg (ns)", "Avg ns"),
    Column.TOTAL_AVG: ("Total Avg Runtime (ns)", "Total Avg (ns)", "Tot ns"),
    Column.EVENTS: ("Events/sec", "Ev/s"),
    Column.CPU: ("CPU %",),
    Column.PROCESS: ("Process",),
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
    Column.PROCESS: "Process",
}
"""Column names in the status line (``sort: CPU % desc``)."""

DROP_ORDER: tuple[Column, ...] = (
    Column.TOTAL_AVG,
    Column.TYPE,
    Column.PROCESS,
    Column.PERIOD_AVG,
    Column.EVENTS,
)
"""On a narrow terminal these columns go first, in this order (ID, Name, CPU % stay)."""

FLEXIBLE_MIN = {Column.NAME: 16, Column.PROCESS: 10, Column.TYPE: 10}
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
    if column is Column.PERIOD_AVG:
        return fmt_ns(sample.period_avg_runtime_ns)
    if column is Column.TOTAL_AVG:
        return fmt_ns(sample.total_avg_runtime_ns)
    if column is Column.EVENTS:
        return fmt_rate(sample.events_per_sec)
    return fmt_percent(sample.cpu_percent)


_FIGURE_OF: dict[Column, str] = {
    Column.PERIOD_AVG: "period_avg_runtime_ns",
    Column.TOTAL_AVG: "total_avg_runtime_ns",
    Column.EVENTS: "events_per_sec",
    Column.CPU: "cpu_percent",
}
"""The sample attribute each numeric column shows."""


def _same_text(before: ProgramSample, now: ProgramSample) -> bool:
    """Whether the text columns (id, type, name, process) of two samples read the same."""
    a, b = before.program, now.program
    return a is b or (
        a.id == b.id and a.type == b.type and a.name == b.name and a.owners == b.owners
    )


class CellCache:
    """The cell texts of the newest snapshot, kept between frames.

    Formatting every cell of thousands of programs is most of a frame's cost, and between
    two samples only the selection, sort or filter change, so the texts are reused while
    the snapshot object is the same one.  A new snapshot reuses, per program, the row of an
    unchanged sample, and the texts of the columns whose value did not change: with every
    program running, only the figures are formatted again, not names and owners.
    """

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._samples: dict[int, ProgramSample] = {}
        self._cells: dict[int, list[str]] = {}
        self._widths: dict[int, list[int]] = {}

    def cells(self, snapshot: Snapshot) -> dict[int, list[str]]:
        """Program id -> its cells in :data:`COLUMNS` order."""
        if snapshot is not self._snapshot:
            self._update(snapshot)
        return self._cells

    def _update(self, snapshot: Snapshot) -> None:
        old_samples, old_cells, old_widths = self._samples, self._cells, self._widths
        samples: dict[int, ProgramSample] = {}
        cells: dict[int, list[str]] = {}
        widths: dict[int, list[int]] = {}
        for sample in snapshot.programs:
            prog_id = sample.program.id
            samples[prog_id] = sample
            before = old_samples.get(prog_id)
            if before is sample:
                cells[prog_id] = old_cells[prog_id]
                widths[prog_id] = old_widths[prog_id]
                continue
            reuse = before is not None and _same_text(before, sample)
            row: list[str] = []
            row_widths: list[int] = []
            for i, column in enumerate(COLUMNS):
                figure = _FIGURE_OF.get(column)
                if reuse and (figure is None or getattr(before, figure) == getattr(sample, figure)):
                    row.append(old_cells[prog_id][i])
                    row_widths.append(old_widths[prog_id][i])
                    continue
                text = cell_text(sample, column)
                row.append(text)
                row_widths.append(display_width(text))
            cells[prog_id] = row
            widths[prog_id] = row_widths
        self._samples, self._cells, self._widths = samples, cells, widths
        self._snapshot = snapshot

    def widths(self, snapshot: Snapshot) -> dict[int, list[int]]:
        """Program id -> the display widths of its cells."""
        self.cells(snapshot)
        return self._widths


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
    cell_widths: Sequence[Sequence[int]], width: int, state: ViewState, glyphs: Glyphs
) -> Layout:
    """Choose columns and widths for ``width`` terminal columns, given the display width of
    every cell of every row (in :data:`COLUMNS` order).

    Columns are dropped in :data:`DROP_ORDER` until the rest fit with their shortest
    labels and the text columns at their minimum widths.  Within that set the longest
    labels that leave every cell whole are used (else the shortest), and the room left goes
    to the Name, then the Type, then the Process column.
    """
    content = {c: max((r[i] for r in cell_widths), default=1) for i, c in enumerate(COLUMNS)}
    usable = width - len(MARKER)
    gaps = len(GAP)
    for dropped in range(len(DROP_ORDER) + 1):
        cols = tuple(c for c in COLUMNS if c not in DROP_ORDER[:dropped])
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
        for flex in (Column.NAME, Column.TYPE, Column.PROCESS):
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


def footer_items(mode: Mode) -> list[str]:
    """The keys of a screen, as the footer lists them."""
    if mode is Mode.FILTER:
        return [
            "type: filter name/type/process",
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
        "c/e/r/t/i/n/p: sort cpu/events/run/total/id/name/proc",
        "?: help",
    ]


def footer_lines(mode: Mode, width: int, max_lines: int = 3) -> list[Line]:
    """The footer: the current screen's keys, wrapped."""
    lines = wrap_items(footer_items(mode), width)[:max_lines]
    return [Line(fit(text, width), Style.DIM) for text in lines]


def render_table(ctx: RenderContext, state: ViewState) -> tuple[list[Line], ViewState, int]:
    """The table screen: ``(lines, reconciled state, rows per page)``."""
    width, height = ctx.width, ctx.height
    samples = ctx.snapshot.programs if ctx.snapshot else ()
    rows = visible_rows(samples, state)
    head = header_lines(ctx, state, len(rows))
    foot = footer_lines(state.mode, width)
    page = max(height - len(head) - len(foot) - 2, 1)  # column header + position line
    ids = [s.id for s in rows]
    state = reconcile(state, ids, page)
    by_id = _cache.cells(ctx.snapshot) if ctx.snapshot is not None else {}
    widths_by_id = _cache.widths(ctx.snapshot) if ctx.snapshot is not None else {}
    cells = [by_id[s.id] for s in rows]
    lay = layout([widths_by_id[s.id] for s in rows], width, state, ctx.glyphs)
    index_of = {c: i for i, c in enumerate(COLUMNS)}
    lines = list(head)
    header = " " * len(MARKER) + format_row(lay.labels, lay)
    lines.append(Line(fit(header, width), Style.HEADER))
    if ctx.snapshot is None:
        lines.append(Line(fit("  waiting for the first sample...", width)))
    elif not rows:
        none = "  no programs match the filter" if state.filter_text else "  no programs loaded"
        lines.append(Line(fit(none, width)))
    for i in range(state.scroll, min(state.scroll + page, len(rows))):
        picked = [cells[i][index_of[c]] for c in lay.columns]
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
