"""Numbers as the live view shows them: ``-`` for unknown, sensible precision, units.

Every function returns plain ASCII; alignment is the table's job.
"""

from __future__ import annotations

import math
import time

UNKNOWN = "-"
"""Shown for a value that does not exist yet (a program's first sample), never ``0``."""


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def scaled(value: float, units: tuple[str, ...] = ("", "k", "M", "G", "T")) -> str:
    """``value`` with an SI suffix and three significant digits: ``12.3k``, ``4.56M``."""
    index = 0
    while abs(value) >= 999.5 and index < len(units) - 1:
        value /= 1000
        index += 1
    if index == 0:
        return f"{value:.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"
    digits = 2 if abs(value) < 9.995 else 1 if abs(value) < 99.95 else 0
    return f"{value:.{digits}f}{units[index]}"


def fmt_int(value: float | None, width: int = 0) -> str:
    """A count or nanoseconds: ``1,234,567``; scaled (``1.23M``) only when wider than
    ``width`` (when given)."""
    if not _finite(value):
        return UNKNOWN
    assert value is not None
    text = f"{round(value):,}"
    if width and len(text) > width:
        return scaled(value)
    return text


def fmt_ns(value: float | None, width: int = 0) -> str:
    """An average runtime in nanoseconds (whole ns; the kernel's clock is ns)."""
    return fmt_int(value, width)


def fmt_rate(value: float | None, width: int = 0) -> str:
    """Events per second: one decimal below 10 (``2.5``), whole numbers above."""
    if not _finite(value):
        return UNKNOWN
    assert value is not None
    if value == 0:
        return "0"
    if abs(value) < 10:
        return f"{value:.1f}"
    return fmt_int(value, width)


def fmt_percent(value: float | None) -> str:
    """CPU % of one core: two decimals from 1 up (``12.35``), two significant digits below
    (``0.015``, ``0.00042``), ``0`` for exactly nothing."""
    if not _finite(value):
        return UNKNOWN
    assert value is not None
    if value == 0:
        return "0"
    if abs(value) >= 0.995:
        return f"{value:.2f}"
    digits = min(-math.floor(math.log10(abs(value))) + 1, 9)
    return f"{value:.{digits}f}"


def fmt_bytes(value: float | None) -> str:
    """Bytes in binary units: ``512 B``, ``4.0 KiB``, ``1.5 MiB``."""
    if not _finite(value):
        return UNKNOWN
    assert value is not None
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    index = 0
    while abs(value) >= 1024 and index < len(units) - 1:
        value /= 1024
        index += 1
    return f"{value:.0f} {units[index]}" if index == 0 else f"{value:.1f} {units[index]}"


def fmt_value(value: float | None, kind: str) -> str:
    """``value`` formatted for a figure kind: ``ns``, ``rate`` or ``percent``."""
    if kind == "percent":
        return fmt_percent(value)
    if kind == "rate":
        return fmt_rate(value)
    return fmt_ns(value)


def fmt_age(seconds: float) -> str:
    """A duration as ``45s``, ``12m03s``, ``5h02m``, ``3d04h``."""
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def fmt_time(epoch: float, now: float | None = None) -> str:
    """Local wall-clock time with its age: ``2026-11-22 03:01:02 (5m03s ago)``."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    if now is None:
        return stamp
    return f"{stamp} ({fmt_age(now - epoch)} ago)"


def fmt_interval(seconds: float) -> str:
    """A sampling interval: ``1s``, ``0.5s``, ``2.5s``."""
    return f"{seconds:g}s"
