"""Bar charts of a figure over the history window, in ASCII, block or braille glyphs.

One table holds each glyph set; ASCII is the fallback everywhere (the Linux console font
has no braille, and some locales cannot encode the blocks).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from otel_bpf.live.format import fmt_value
from otel_bpf.live.options import Glyphs

# Partial cells from 1/N to (N-1)/N of a cell, then the full cell.
_PARTIALS: dict[Glyphs, tuple[str, ...]] = {
    Glyphs.ASCII: (".", ":", "#"),
    Glyphs.BLOCK: ("\u2581", "\u2582", "\u2583", "\u2584", "\u2585", "\u2586", "\u2587", "\u2588"),
}
# Braille dots from the bottom row up, for the left and the right sample of a cell.
_BRAILLE_LEFT = (0x40, 0x04, 0x02, 0x01)
_BRAILLE_RIGHT = (0x80, 0x20, 0x10, 0x08)
BRAILLE_BLANK = 0x2800


def samples_per_cell(glyphs: Glyphs) -> int:
    """How many samples one character cell shows (braille packs two)."""
    return 2 if glyphs is Glyphs.BRAILLE else 1


def _levels_per_cell(glyphs: Glyphs) -> int:
    return 4 if glyphs is Glyphs.BRAILLE else len(_PARTIALS[glyphs])


def scale_top(values: Sequence[float | None]) -> float:
    """The value the chart's top edge stands for: the window's max (1 when all are 0)."""
    known = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return max(known) if known else 1.0


def filled_levels(value: float | None, top: float, total_levels: int) -> int:
    """Filled levels of ``total_levels`` for ``value``, full at ``top``; any non-zero value
    shows at least one, so "a little" never looks like "nothing"."""
    if value is None or not math.isfinite(value) or value <= 0:
        return 0
    level = round(value / top * total_levels)
    return min(max(level, 1), total_levels)


def bars(
    values: Sequence[float | None], width: int, height: int, glyphs: Glyphs, top: float | None
) -> list[str]:
    """The plot area: ``height`` rows of exactly ``width`` cells, newest sample on the right.

    ``None`` (no value for that sample: the program's first sample or not loaded then)
    leaves the column empty.
    """
    if width <= 0 or height <= 0:
        return [""] * max(height, 0)
    per_cell = samples_per_cell(glyphs)
    recent = list(values[-width * per_cell :])
    # Right-align: the newest sample sits at the right edge.
    padding: list[float | None] = [None] * (width * per_cell - len(recent))
    shown = padding + recent
    top = top if top and top > 0 else scale_top(shown)
    per_row = _levels_per_cell(glyphs)
    levels = [filled_levels(v, top, per_row * height) for v in shown]
    rows: list[str] = []
    for row in range(height):  # row 0 is the top
        base = (height - 1 - row) * per_row  # levels below this row
        if glyphs is Glyphs.BRAILLE:
            cells = []
            for i in range(width):
                bits = BRAILLE_BLANK
                for dots, level in (
                    (_BRAILLE_LEFT, levels[2 * i]),
                    (_BRAILLE_RIGHT, levels[2 * i + 1]),
                ):
                    for d in range(min(max(level - base, 0), per_row)):
                        bits |= dots[d]
                cells.append(chr(bits))
            rows.append("".join(cells))
        else:
            glyph_set = _PARTIALS[glyphs]
            line = []
            for level in levels:
                fill = min(max(level - base, 0), per_row)
                line.append(glyph_set[fill - 1] if fill else " ")
            rows.append("".join(line))
    return rows


def window_stats(values: Sequence[float | None]) -> tuple[float | None, float | None, float | None]:
    """``(current, mean, max)`` over the window; unknown values are left out."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    current = values[-1] if values else None
    if not known:
        return current, None, None
    return current, sum(known) / len(known), max(known)


def chart(
    title: str,
    values: Sequence[float | None],
    kind: str,
    width: int,
    height: int,
    glyphs: Glyphs,
) -> list[str]:
    """A titled chart, ``height`` lines (title included) of exactly ``width`` columns.

    The title carries the current, mean and max values of the window; the y axis is
    labelled with the top value and 0.
    """
    current, mean, peak = window_stats(values)
    head = (
        f"{title}  now {fmt_value(current, kind)}  mean {fmt_value(mean, kind)}"
        f"  max {fmt_value(peak, kind)}"
    )
    lines = [head[:width].ljust(width)]
    plot_rows = height - 1
    if plot_rows <= 0:
        return lines[:height]
    top = scale_top(values)
    top_label = fmt_value(top if peak else 0.0, kind)
    axis = max(len(top_label), 1)
    plot_width = width - axis - 1
    if plot_width < 4:
        return lines + [" " * width] * plot_rows
    area = bars(values, plot_width, plot_rows, glyphs, top)
    for i, row in enumerate(area):
        if i == 0:
            label = top_label
        elif i == plot_rows - 1:
            label = "0"
        else:
            label = ""
        lines.append(label.rjust(axis) + "|" + row)
    return lines
