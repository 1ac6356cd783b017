"""The widest text a number column would show, found without formatting every value.

Sizing the table's columns by formatting every figure of every program is most of a frame's
cost with thousands of programs, while only a page of rows is ever on screen.  Each
formatter of :mod:`otel_bpf.live.format` is monotone in the value's magnitude on a few
ranges, so the widest text of a column is the text of one of a few extreme values: those are
the only ones formatted.  The result is exact (the same width as formatting them all), so the
columns neither jump when the view scrolls nor stay wider than the figures need.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from otel_bpf.live.format import fmt_ns, fmt_percent, fmt_rate

Candidates = Callable[[list[float]], list[float]]


def _extremes(values: list[float]) -> list[float]:
    # Width grows with |value| (a minus sign adds one): the largest and the smallest.
    return [max(values), min(values)]


def _rate_extremes(values: list[float]) -> list[float]:
    # fmt_rate shows one decimal below 10 ("9.9", "10.0" for 9.95 and up) and whole numbers
    # from 10 ("10"): width grows with |value| within each range, so the largest |value| of
    # each range and sign.
    out = _extremes(values)
    out.append(max((v for v in values if 0 < v < 10), default=0.0))
    out.append(min((v for v in values if -10 < v < 0), default=0.0))
    return out


def _percent_extremes(values: list[float]) -> list[float]:
    # fmt_percent shows two decimals from 0.995 (wider as |value| grows) and two significant
    # digits below (wider as |value| shrinks): the largest |value| and the smallest non-zero
    # |value| of each sign.
    out = _extremes(values)
    out.append(min((v for v in values if v > 0), default=0.0))
    out.append(max((v for v in values if v < 0), default=0.0))
    return out


KINDS: dict[str, tuple[Callable[[float | None], str], Candidates]] = {
    "ns": (fmt_ns, _extremes),
    "rate": (fmt_rate, _rate_extremes),
    "percent": (fmt_percent, _percent_extremes),
}
"""Figure kind -> (its formatter, the values whose texts include the widest one)."""


def widest(values: Iterable[float | None], kind: str) -> int:
    """The largest ``len(formatter(v))`` over ``values`` (1 for none: the width of ``-``).

    The formatters return plain ASCII, so length is display width.
    """
    fmt, candidates = KINDS[kind]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return 1
    return max(len(fmt(v)) for v in candidates(finite))
