"""The detail view's per-CPU split: one bar per CPU, or per group of CPUs on a big host.

Every figure is of the last period (``ProgramSample.per_cpu``): the share of the CPU's time
the program took, its runs per second and its mean runtime there.  When the CPUs do not fit
the rows given, consecutive CPUs are grouped (``cpu 0-7``) so that they do: a group shows
its CPUs' mean share, their summed runs per second, the mean runtime of all their runs and
its busiest CPU, and a line says so.  The text is all numbers: nothing here comes from
outside the kernel's counters, so nothing needs sanitising.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from otel_bpf.live.charts import filled_levels
from otel_bpf.live.format import UNKNOWN, fmt_ns, fmt_percent, fmt_rate
from otel_bpf.live.sanitize import fit
from otel_bpf.live.terminal import Line, Style
from otel_bpf.snapshot import CpuSample, ProgramSample

MAX_BAR = 50
"""Columns of the longest bar: wider ones would put the numbers of a row far apart."""
MIN_BAR = 4
"""Below this many columns no bar is drawn (the numbers say it all)."""


@dataclass(frozen=True, slots=True)
class CpuRow:
    """One line of the split: a CPU, or a group of consecutive CPUs."""

    label: str
    """``cpu 3`` or ``cpu 0-7``."""
    share: float
    """The share of the CPU's time (0..1); a group's is the mean of its CPUs'."""
    runs_per_sec: float
    """Runs per second (summed over a group)."""
    avg_runtime_ns: float | None
    """Mean ns per run (over all a group's runs); None when nothing ran."""
    busiest: CpuSample | None = None
    """A group's CPU with the largest share (the lowest-numbered of equals); None for a
    single CPU."""


def known_cpus(sample: ProgramSample) -> tuple[CpuSample, ...] | None:
    """The per-CPU samples of ``sample`` when they have figures for the last period."""
    cpus = sample.per_cpu
    # A period's figures are known for every CPU or for none (snapshot.derive_per_cpu).
    if not cpus or cpus[0].cpu_utilization is None or cpus[0].events_per_sec is None:
        return None
    return cpus


def _share(cpu: CpuSample) -> float:
    return cpu.cpu_utilization or 0.0


def _rate(cpu: CpuSample) -> float:
    return cpu.events_per_sec or 0.0


def cpu_row(cpu: CpuSample) -> CpuRow:
    """The line of one CPU."""
    return CpuRow(f"cpu {cpu.cpu}", _share(cpu), _rate(cpu), cpu.period_avg_runtime_ns)


def group_row(cpus: Sequence[CpuSample]) -> CpuRow:
    """The line of consecutive CPUs: the mean share, summed runs/s, the mean runtime of
    all their runs (each CPU's mean weighted by its runs) and the busiest CPU."""
    if len(cpus) == 1:
        return cpu_row(cpus[0])
    runs = sum(_rate(c) for c in cpus)
    ns = sum(_rate(c) * c.period_avg_runtime_ns for c in cpus if c.period_avg_runtime_ns)
    return CpuRow(
        f"cpu {cpus[0].cpu}-{cpus[-1].cpu}",
        sum(_share(c) for c in cpus) / len(cpus),
        runs,
        ns / runs if runs > 0 else None,
        max(cpus, key=_share),
    )


def cpu_rows(cpus: Sequence[CpuSample], rows: int) -> tuple[list[CpuRow], int]:
    """At most ``rows`` lines for ``cpus`` (in CPU order): one per CPU when they fit, else
    groups of ``size`` consecutive CPUs, the smallest power of two that fits (the last
    group may be smaller).  Returns ``(lines, size)``.

    Powers of two, because cores, SMT siblings and sockets are numbered in such blocks on
    most hosts: ``cpu 0-7`` tends to be something, ``cpu 0-4`` rarely is."""
    rows = max(rows, 1)
    if len(cpus) <= rows:
        return [cpu_row(c) for c in cpus], 1
    size = 1 << (math.ceil(len(cpus) / rows) - 1).bit_length()
    groups = [cpus[i : i + size] for i in range(0, len(cpus), size)]
    return [group_row(g) for g in groups], size


def _percent(share: float) -> str:
    return fmt_percent(share * 100) + "%"


def _bar(share: float, top: float, width: int) -> str:
    """``[####    ]`` of ``width`` columns, full at ``top``; a share above 0 shows at least
    one ``#``, so "ran a little" never looks like "did not run"."""
    inner = width - 2
    filled = filled_levels(share, top, inner) if top > 0 else 0
    return "[" + "#" * filled + " " * (inner - filled) + "]"


def format_rows(rows: Sequence[CpuRow], width: int) -> list[str]:
    """The rows as aligned text lines of at most ``width`` columns: label, share, runs/s,
    mean runtime, a group's busiest CPU, then a bar scaled to the largest share shown."""
    grouped = any(r.busiest is not None for r in rows)
    cells = []
    for r in rows:
        row = [
            r.label,
            _percent(r.share),
            fmt_rate(r.runs_per_sec) + "/s",
            UNKNOWN if r.avg_runtime_ns is None else fmt_ns(r.avg_runtime_ns) + " ns",
        ]
        if grouped:
            b = r.busiest
            row.append(
                f"busiest {b.cpu} {_percent(_share(b))}" if b is not None and _share(b) else ""
            )
        cells.append(row)
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    top = max(r.share for r in rows)
    # On a narrow terminal the last figures go whole rather than cut; label and share stay.
    shown = len(widths)
    while shown > 2 and sum(widths[:shown]) + 2 * (shown - 1) > width:
        shown -= 1
    lines = []
    for r, row in zip(rows, cells, strict=True):
        parts = [row[0].ljust(widths[0])]
        parts += [text.rjust(w) for text, w in zip(row[1:4], widths[1:4], strict=True)]
        if grouped:
            parts.append(row[4].ljust(widths[4]))
        text = "  ".join(parts[:shown])
        bar = min(width - len(text) - 2, MAX_BAR)
        if bar >= MIN_BAR:
            text += "  " + _bar(r.share, top, bar)
        lines.append(text)
    return lines


def _longest_fitting(texts: Sequence[str], width: int) -> str:
    """The first of ``texts`` (longest first) that fits ``width``, else the last."""
    return next((t for t in texts if len(t) <= width), texts[-1])


def cpu_section(sample: ProgramSample, width: int, max_lines: int) -> list[Line]:
    """The per-CPU split of ``sample``'s last period in at most ``max_lines`` lines of
    exactly ``width`` columns: a title with the imbalance, a line saying how CPUs are
    grouped when they are, and the rows.  Before the first full period (or for a reused
    id) it says there are no figures yet, rather than showing zeros."""
    if max_lines <= 0:
        return []
    cpus = known_cpus(sample)
    if cpus is None:
        text = (
            "Per CPU: no figures until the first full period"
            if sample.per_cpu
            else "Per CPU: not read for this program"
        )
        return [Line(fit(text, width), Style.TITLE)]
    rows: list[CpuRow] = []
    notes: list[str] = []
    if max_lines >= 2:
        rows, size = cpu_rows(cpus, max_lines - 1)
        if size > 1 and max_lines >= 3:
            # Room for the line saying how they are grouped: fit the rows into one line less.
            rows, size = cpu_rows(cpus, max_lines - 2)
            last = len(cpus) % size
            sizes = f"{size}" if not last else f"{size} (the last of {last})"
            groups = f"{len(cpus)} CPUs in {len(rows)} groups of {sizes}"
            notes = [
                f"{groups}: mean share, summed runs/s, mean runtime and busiest CPU of each",
                groups,
                f"{len(cpus)} CPUs in groups of {size}",
            ]
    imbalance = sample.cpu_imbalance
    if imbalance is None:
        titles = ["Per CPU, last period: no runs", "Per CPU: no runs"]
    else:
        # The bars' scale: the largest share of a row (a group's is its mean).
        full = f", bars full at {_percent(max(r.share for r in rows))}" if rows else ""
        titles = [
            f"Per CPU, last period: imbalance {imbalance:.2f} (busiest/mean share){full}",
            f"Per CPU: imbalance {imbalance:.2f}{full}",
            f"Per CPU: imbalance {imbalance:.2f}",
            f"imbalance {imbalance:.2f}",
        ]
    lines = [Line(fit(_longest_fitting(titles, width), width), Style.TITLE)]
    if notes:
        lines.append(Line(fit(_longest_fitting(notes, width), width), Style.DIM))
    lines.extend(Line(fit(text, width)) for text in format_rows(rows, width))
    return lines
