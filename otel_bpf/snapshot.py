"""One sampling pass as an immutable value: every program with its figures for the period."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from otel_bpf import figures
from otel_bpf.records import ProgramRecord, StatsState


@dataclass(frozen=True, slots=True)
class CpuSample:
    """A program's counters on one CPU and its figures there over the period (None where the
    totals' figures would be None: a first sample, a reused id)."""

    cpu: int
    run_time_ns: int
    run_cnt: int
    recursion_misses: int
    events_per_sec: float | None
    period_avg_runtime_ns: float | None
    """Mean ns per run on this CPU; None also when it ran nothing here."""
    cpu_utilization: float | None
    """The share of this CPU's time the program took, 0..1."""


@dataclass(frozen=True, slots=True)
class ProgramSample:
    """A program's reading plus the figures derived against the previous pass."""

    program: ProgramRecord
    period_avg_runtime_ns: float | None
    total_avg_runtime_ns: float | None
    events_per_sec: float | None
    cpu_percent: float | None
    """Percent of ONE core (can exceed 100 on a multi-core host)."""
    cpu_utilization: float | None
    """Fraction of all online CPUs, 0..1."""
    per_cpu: tuple[CpuSample, ...] | None = None
    """Per possible CPU, when the record has per-CPU counters; else None."""
    cpu_imbalance: float | None = None
    """The largest per-CPU share of time over the mean share across the CPUs (1 = even);
    None without per-CPU counters, on a first sample, or when nothing ran."""

    @property
    def id(self) -> int:
        """The program id (shortcut for ``program.id``)."""
        return self.program.id


def derive(
    prev: ProgramRecord | None, cur: ProgramRecord, dt: float | None, online_cpus: int
) -> ProgramSample:
    """The sample for ``cur`` given the previous reading of the same program (if any).

    The figures are those of :mod:`otel_bpf.figures`, computed with the same expressions
    but with the readings compared once rather than once per figure: this runs for every
    program that ran, every pass.
    """
    if cur.per_cpu is not None:
        per_cpu = derive_per_cpu(prev, cur, dt)
        imbalance = figures.cpu_imbalance([c.cpu_utilization for c in per_cpu])
    else:
        per_cpu, imbalance = None, None
    total = None if cur.run_cnt == 0 else cur.run_time_ns / cur.run_cnt
    if prev is None or not figures.comparable(prev, cur):
        return ProgramSample(cur, None, total, None, None, None, per_cpu, imbalance)
    runs = cur.run_cnt - prev.run_cnt
    period = None if runs == 0 else (cur.run_time_ns - prev.run_time_ns) / runs
    if dt is None or dt <= 0:
        return ProgramSample(cur, period, total, None, None, None, per_cpu, imbalance)
    pct = (cur.run_time_ns - prev.run_time_ns) / (dt * 1e9) * 100.0
    utilization = figures.capped_share(pct / 100.0 / online_cpus) if online_cpus > 0 else None
    return ProgramSample(cur, period, total, runs / dt, pct, utilization, per_cpu, imbalance)


def derive_per_cpu(
    prev: ProgramRecord | None, cur: ProgramRecord, dt: float | None
) -> tuple[CpuSample, ...]:
    """The per-CPU samples of ``cur`` (which has per-CPU counters)."""
    assert cur.per_cpu is not None
    deltas = figures.cpu_deltas(prev, cur)
    if dt is None or dt <= 0:
        deltas = None
    out = []
    for c in cur.per_cpu:
        if deltas is None:
            rate = avg = share = None
        else:
            runs, ns = deltas[c.cpu]
            rate = runs / dt if dt else None
            avg = ns / runs if runs else None
            share = figures.cpu_share(ns, dt)
        out.append(CpuSample(c.cpu, c.run_time_ns, c.run_cnt, c.recursion_misses, rate, avg, share))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one pass saw.  Consumers read it; nobody mutates it."""

    seq: int
    """1 for the first pass, then +1 per pass."""
    wall_time: float
    """UNIX time at the end of the pass."""
    monotonic: float
    """Monotonic clock where the pass read the counters (seconds)."""
    elapsed: float | None
    """Monotonic seconds since the previous pass; None for the first."""
    online_cpus: int
    stats: StatsState
    sampling_path: str
    """How the programs were read: ``"syscall"`` or ``"iterator"``."""
    programs: tuple[ProgramSample, ...]
    errors: tuple[str, ...] = ()
    """Per-program read failures of this pass (the pass still completed)."""
    # The id index is built on the first get(): a history of 120 snapshots of 1,000 programs
    # would otherwise keep 120 dicts alive that only the newest snapshot's readers use.
    _by_id: dict[int, ProgramSample] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def get(self, prog_id: int) -> ProgramSample | None:
        """The sample of program ``prog_id``, or None when it is not loaded (any more)."""
        by_id = self._by_id
        if by_id is None:
            by_id = {s.program.id: s for s in self.programs}
            object.__setattr__(self, "_by_id", by_id)  # a cache, equal for every caller
        return by_id.get(prog_id)


def build_snapshot(
    prev: Snapshot | None,
    records: Iterable[ProgramRecord],
    *,
    monotonic: float,
    wall_time: float,
    online_cpus: int,
    stats: StatsState,
    sampling_path: str = "syscall",
    errors: tuple[str, ...] = (),
    fresh_period: bool = False,
) -> Snapshot:
    """The snapshot of one pass, with figures against ``prev`` (pure; no kernel access).

    ``fresh_period``: the figures over a period are not derived (as on a first reading), but
    the snapshot still follows ``prev`` in ``seq``: the counters paused since ``prev``.
    """
    seq = 1 if prev is None else prev.seq + 1
    if fresh_period:
        prev = None
    dt = None if prev is None else monotonic - prev.monotonic
    samples = []
    # An idle program's sample is the same every pass (no runs: 0/s, 0 %, no period
    # average), and the iterator path hands back the same record object while its counters
    # stay put: such a sample is reused as it is, which keeps passes and history cheap.
    idle_utilization = 0.0 if online_cpus > 0 else None
    for rec in records:
        before = prev.get(rec.id) if prev is not None else None
        if before is None:
            samples.append(derive(None, rec, dt, online_cpus))
        elif (
            before.program is rec
            and before.events_per_sec == 0.0
            and before.cpu_percent == 0.0
            and before.cpu_utilization == idle_utilization
            and dt is not None
            and dt > 0
        ):
            samples.append(before)
        else:
            samples.append(derive(before.program, rec, dt, online_cpus))
    return Snapshot(
        seq=seq,
        wall_time=wall_time,
        monotonic=monotonic,
        elapsed=dt,
        online_cpus=online_cpus,
        stats=stats,
        sampling_path=sampling_path,
        programs=tuple(samples),
        errors=errors,
    )
