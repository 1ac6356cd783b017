"""Derived figures: pure functions of two readings of the same program.

The formulas are bpftop's, minus its quirks: a program seen for the first time has no rates
(None, never 0 or its lifetime average), and a reading whose counters went backwards (a
different program behind a reused id) starts a fresh series instead of yielding negatives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from otel_bpf.records import ProgramRecord

LOAD_TIME_TOLERANCE = 1.0
"""Seconds two readings' load times may differ and still be the same program.

The kernel reports load time in ns since boot; turning it into wall-clock time uses the boot
time, which each pass derives from two clock reads, so the same program's load time wobbles by
microseconds between passes (and jumps when the wall clock is stepped).  A reused id always
belongs to a program loaded later than the previous one was last seen, and the kernel hands ids
out cyclically, so a one-second tolerance cannot merge two different programs in practice; the
counters-went-backwards check below catches the rest."""


class Reading(Protocol):
    """What tells one program from another behind the same id: a record, or a running total."""

    @property
    def load_time(self) -> float: ...

    @property
    def run_time_ns(self) -> int: ...

    @property
    def run_cnt(self) -> int: ...

    @property
    def recursion_misses(self) -> int | None: ...


def same_program(before: Reading, now: Reading) -> bool:
    """Whether ``now`` is a later reading of the program ``before`` was read from, not of
    another program behind a reused id: the same load time, and no counter went backwards."""
    return (
        abs(before.load_time - now.load_time) <= LOAD_TIME_TOLERANCE
        and now.run_cnt >= before.run_cnt
        and now.run_time_ns >= before.run_time_ns
        and (now.recursion_misses or 0) >= (before.recursion_misses or 0)
    )


def comparable(prev: ProgramRecord | None, cur: ProgramRecord) -> bool:
    """Whether ``prev`` is an earlier reading of the very program ``cur`` describes."""
    return prev is not None and prev.id == cur.id and same_program(prev, cur)


def period_avg_runtime_ns(prev: ProgramRecord | None, cur: ProgramRecord) -> float | None:
    """Mean ns per run over the period; None on a first reading or when nothing ran."""
    if prev is None or not comparable(prev, cur):
        return None
    runs = cur.run_cnt - prev.run_cnt
    if runs == 0:
        return None
    return (cur.run_time_ns - prev.run_time_ns) / runs


def total_avg_runtime_ns(cur: ProgramRecord) -> float | None:
    """Mean ns per run over everything the kernel has counted; None before the first run."""
    if cur.run_cnt == 0:
        return None
    return cur.run_time_ns / cur.run_cnt


def events_per_sec(
    prev: ProgramRecord | None, cur: ProgramRecord, dt: float | None
) -> float | None:
    """Runs per second over the period of ``dt`` seconds."""
    if prev is None or dt is None or dt <= 0 or not comparable(prev, cur):
        return None
    return (cur.run_cnt - prev.run_cnt) / dt


def cpu_percent(prev: ProgramRecord | None, cur: ProgramRecord, dt: float | None) -> float | None:
    """Run time as a percentage of ONE core, like top: 250 means two and a half cores."""
    if prev is None or dt is None or dt <= 0 or not comparable(prev, cur):
        return None
    return (cur.run_time_ns - prev.run_time_ns) / (dt * 1e9) * 100.0


def cpu_utilization(
    prev: ProgramRecord | None, cur: ProgramRecord, dt: float | None, online_cpus: int
) -> float | None:
    """Run time as a fraction of all online CPUs (semantic-convention style, 0..1)."""
    pct = cpu_percent(prev, cur, dt)
    if pct is None or online_cpus <= 0:
        return None
    return capped_share(pct / 100.0 / online_cpus)


def capped_share(share: float) -> float:
    """A share of CPU time, at most 1 (all of it).

    A period is timed from the middle of one counter read to the middle of the next; on a
    host whose CPUs are all busy, the sampler can be preempted around a read for a few
    milliseconds, and a period can then look up to that much shorter than the run time it
    holds (seen: 1.0065 of two saturated CPUs over 0.1 s).  No program can use more than
    every CPU's time, so a share above 1 is that timing error, and 1 is the figure.
    """
    return share if share <= 1.0 else 1.0


def cpu_deltas(prev: ProgramRecord | None, cur: ProgramRecord) -> dict[int, tuple[int, int]] | None:
    """Per CPU, the runs and run time (ns) of the period, by CPU number; None on a first
    reading, for another program behind a reused id, when either reading has no per-CPU
    counters, when the CPUs differ, or when a CPU's counters went backwards (the same rules
    as the totals')."""
    if cur.per_cpu is None or prev is None or prev.per_cpu is None or not comparable(prev, cur):
        return None
    before = {c.cpu: c for c in prev.per_cpu}
    deltas = {}
    for now in cur.per_cpu:
        then = before.get(now.cpu)
        if then is None:
            return None
        runs, ns = now.run_cnt - then.run_cnt, now.run_time_ns - then.run_time_ns
        if runs < 0 or ns < 0:
            return None
        deltas[now.cpu] = (runs, ns)
    return deltas


def cpu_share(run_time_ns: int, dt: float | None) -> float | None:
    """The fraction of one CPU's time (0..1) that ``run_time_ns`` of run time took in a
    period of ``dt`` seconds (capped at 1, see :func:`capped_share`)."""
    if dt is None or dt <= 0:
        return None
    return capped_share(run_time_ns / (dt * 1e9))


def cpu_imbalance(shares: Sequence[float | None]) -> float | None:
    """How unevenly a program loads the CPUs: its largest per-CPU share over the mean share
    across all of them (1 = even, N = all on one of N CPUs); None when a share is unknown or
    nothing ran."""
    if not shares or any(share is None for share in shares):
        return None
    known = [share for share in shares if share is not None]
    mean = sum(known) / len(known)
    if mean <= 0:
        return None
    return max(known) / mean
