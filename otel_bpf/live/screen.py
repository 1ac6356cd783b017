"""One frame of the live view: the screen for the current mode (pure)."""

from __future__ import annotations

from otel_bpf.live.context import RenderContext
from otel_bpf.live.render_detail import render_detail
from otel_bpf.live.render_table import SHORT_NAMES, footer_lines, render_table
from otel_bpf.live.sanitize import fit
from otel_bpf.live.state import DIRECT_SORT_KEYS, Mode, ViewState, table_columns
from otel_bpf.live.terminal import Line, Style


def help_keys(per_cpu: bool) -> tuple[tuple[str, str], ...]:
    """Every key of the live view, as the help screen lists them (the sort keys of the
    columns the table offers)."""
    offered = table_columns(per_cpu)
    return (
        *HELP_KEYS[:_SORT_KEYS_AT],
        *(
            (key, f"sort by {SHORT_NAMES[col]} (again: reverse)")
            for key, col in DIRECT_SORT_KEYS.items()
            if col in offered
        ),
        *HELP_KEYS[_SORT_KEYS_AT:],
    )


HELP_KEYS: tuple[tuple[str, str], ...] = (
    ("Up/Down, k/j", "move the selection"),
    ("PgUp/PgDn", "move by a page"),
    ("Home/End, g/G", "first / last program"),
    ("Enter", "detail view of the selected program (Esc or Enter goes back)"),
    ("f or /", "filter by name, type, process or attach point, applied as you type"),
    ("", "(an attach target or interface: eth0 shows the programs on eth0)"),
    ("  Enter / Esc", "keep the filter / clear it"),
    ("Esc", "clear the filter"),
    ("s", "choose the sort: Left/Right column, Up ascending, Down descending"),
    ("?", "this help (any key closes it)"),
    ("Ctrl-L", "repaint the screen"),
    ("q, Ctrl-C", "quit"),
    ("Ctrl-Z", "suspend (fg resumes)"),
)
"""The keys other than the direct sort keys, which :func:`help_keys` puts after ``s``."""

_SORT_KEYS_AT = HELP_KEYS.index(("?", "this help (any key closes it)"))


def render_help(ctx: RenderContext, state: ViewState) -> list[Line]:
    """The help screen."""
    width, height = ctx.width, ctx.height
    foot = footer_lines(state.mode, width)
    lines = [Line(fit("bpftop-otel live view: keys", width), Style.TITLE), Line(" " * width)]
    lines += [Line(fit(f"  {key:<16} {what}", width)) for key, what in help_keys(ctx.per_cpu)]
    notes = [
        "CPU % is a share of ONE core, like top (can exceed 100).",
        "'-' means not known yet: a program's first sample has no rates.",
    ]
    if ctx.per_cpu:
        notes.append("Busiest CPU %: the share of that CPU's time, @ the CPU's number.")
    else:
        notes.append("Start with --per-cpu for each program's split across the CPUs.")
    lines += [Line(" " * width), *(Line(fit(f"  {note}", width)) for note in notes)]
    body = height - len(foot)
    lines = lines[:body]
    lines += [Line(" " * width)] * (body - len(lines))
    return lines + foot


def render_screen(ctx: RenderContext, state: ViewState) -> tuple[list[Line], ViewState, int]:
    """The frame for ``state.mode``: ``(lines, reconciled state, table rows per page)``."""
    if state.mode is Mode.DETAIL:
        # Keep the table's state in step while the detail view is up (selection by id).
        _, state, page = render_table(ctx, state)
        return render_detail(ctx, state)[: ctx.height], state, page
    if state.mode is Mode.HELP:
        _, state, page = render_table(ctx, state)
        return render_help(ctx, state)[: ctx.height], state, page
    return render_table(ctx, state)
