"""Records and snapshots for the live view's pure tests (plain data, no kernel)."""

from __future__ import annotations

from collections.abc import Sequence

from otel_bpf.records import (
    Attachment,
    CpuCounters,
    MapRecord,
    Owner,
    ProgramRecord,
    StatsState,
)
from otel_bpf.snapshot import Snapshot, build_snapshot

STATS_ON = StatsState(ours=True, sysctl=False, others=False)
LOADED = 1_763_780_000.0


def program(
    prog_id: int,
    name: str = "",
    *,
    type: str = "xdp",
    run_time_ns: int = 0,
    run_cnt: int = 0,
    owners: tuple[Owner, ...] | None = (),
    maps: tuple[MapRecord, ...] | None = None,
    per_cpu: Sequence[tuple[int, int]] | None = None,
    attachments: tuple[Attachment, ...] | None = None,
) -> ProgramRecord:
    """A program reading with plausible fixed facts; ``per_cpu`` gives ``(run_cnt,
    run_time_ns)`` on each CPU from 0 (the totals are then their sums)."""
    cpus = None
    if per_cpu is not None:
        cpus = tuple(CpuCounters(i, ns, cnt, 0) for i, (cnt, ns) in enumerate(per_cpu))
        run_cnt = sum(c.run_cnt for c in cpus)
        run_time_ns = sum(c.run_time_ns for c in cpus)
    return ProgramRecord(
        id=prog_id,
        type=type,
        type_id=6,
        name=name or f"prog_{prog_id}",
        tag="0123456789abcdef",
        run_time_ns=run_time_ns,
        run_cnt=run_cnt,
        recursion_misses=0,
        load_time=LOADED,
        uid=0,
        verified_insns=12,
        xlated_size=96,
        jited_size=64,
        map_ids=tuple(m.id for m in maps or ()),
        btf_id=7,
        memlock_bytes=4096,
        owners=owners,
        maps=maps,
        attachments=attachments,
        per_cpu=cpus,
    )


def snapshots(
    readings: Sequence[Sequence[ProgramRecord]], *, dt: float = 1.0, stats: StatsState = STATS_ON
) -> list[Snapshot]:
    """One snapshot per pass, each derived from the one before (``dt`` seconds apart)."""
    out: list[Snapshot] = []
    prev: Snapshot | None = None
    for i, records in enumerate(readings):
        prev = build_snapshot(
            prev,
            records,
            monotonic=100.0 + i * dt,
            wall_time=LOADED + 60 + i * dt,
            online_cpus=2,
            stats=stats,
        )
        out.append(prev)
    return out


def steady(count: int, passes: int = 2) -> list[Snapshot]:
    """``count`` programs, program ``i`` running ``10*i`` times a second at 100 ns a run."""
    readings = [
        [program(i, run_time_ns=1000 * i * p, run_cnt=10 * i * p) for i in range(1, count + 1)]
        for p in range(1, passes + 1)
    ]
    return snapshots(readings)


def per_cpu_history(
    cpus: int = 2, passes: int = 3, hot: int = 1, name: str = "otel_pc_hot"
) -> list[Snapshot]:
    """Three programs with per-CPU counters on ``cpus`` CPUs, ``passes`` passes 1 s apart:
    10 (``name``) runs 500 times a second at 300 ns a run on CPU ``hot`` only, 11
    ``otel_pc_even`` 10 times a second at 100 ns on every CPU, 12 ``otel_pc_idle`` never."""
    readings = []
    for p in range(passes):
        hot_split = [(500 * p, 150_000 * p) if c == hot else (0, 0) for c in range(cpus)]
        readings.append(
            [
                program(10, name, type="socket_filter", per_cpu=hot_split),
                program(11, "otel_pc_even", per_cpu=[(10 * p, 1_000 * p)] * cpus),
                program(12, "otel_pc_idle", per_cpu=[(0, 0)] * cpus),
            ]
        )
    return snapshots(readings)
