"""``--json`` output: one JSON object per program per tick (JSON Lines), a stable schema.

Field names follow the kernel's (``run_time_ns``, ``run_cnt``, ...) so scripts written
against ``bpftool prog show -j`` read naturally.  Figures that are not known yet (a
program's first sample, a period without runs) are ``null``, never 0.  Text the kernel or a
process chose (program names, ``comm``) is escaped to plain ASCII, so no control character
ever reaches the terminal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import datetime, timezone

from otel_bpf.records import ProgramRecord
from otel_bpf.snapshot import ProgramSample, Snapshot

FIELDS: tuple[str, ...] = (
    "timestamp",
    "seq",
    "id",
    "type",
    "name",
    "tag",
    "run_time_ns",
    "run_cnt",
    "recursion_misses",
    "load_time",
    "uid",
    "verified_insns",
    "xlated_size",
    "jited_size",
    "memlock_bytes",
    "map_ids",
    "period_avg_runtime_ns",
    "total_avg_runtime_ns",
    "events_per_sec",
    "cpu_percent",
    "cpu_utilization",
    "owners",
)
"""Every key of every object, in output order (the schema; add fields only at the end)."""


def rfc3339(unix_time: float) -> str:
    """``2026-11-22T03:25:15.738038Z``: RFC 3339, UTC, microseconds."""
    stamp = datetime.fromtimestamp(unix_time, tz=timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _figure(value: float | None) -> float | None:
    # JSON has no NaN/Infinity; an undefined figure is null like an unknown one.
    if value is None or not math.isfinite(value):
        return None
    return value


def sample_object(sample: ProgramSample, snapshot: Snapshot) -> dict[str, object]:
    """The JSON object of one program in one tick (keys in ``FIELDS`` order)."""
    prog = sample.program
    owners = (
        None
        if prog.owners is None
        else [
            {"pid": owner.pid, "comm": owner.comm, "via": list(owner.via)} for owner in prog.owners
        ]
    )
    return {
        "timestamp": rfc3339(snapshot.wall_time),
        "seq": snapshot.seq,
        "id": prog.id,
        "type": prog.type,
        "name": prog.name,
        "tag": prog.tag,
        "run_time_ns": prog.run_time_ns,
        "run_cnt": prog.run_cnt,
        "recursion_misses": prog.recursion_misses,
        "load_time": rfc3339(prog.load_time),
        "uid": prog.uid,
        "verified_insns": prog.verified_insns,
        "xlated_size": prog.xlated_size,
        "jited_size": prog.jited_size,
        "memlock_bytes": prog.memlock_bytes,
        "map_ids": list(prog.map_ids),
        "period_avg_runtime_ns": _figure(sample.period_avg_runtime_ns),
        "total_avg_runtime_ns": _figure(sample.total_avg_runtime_ns),
        "events_per_sec": _figure(sample.events_per_sec),
        "cpu_percent": _figure(sample.cpu_percent),
        "cpu_utilization": _figure(sample.cpu_utilization),
        "owners": owners,
    }


def encode(obj: dict[str, object]) -> str:
    """One line of JSON, pure ASCII: control characters and non-ASCII text are escaped."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    # json escapes U+0000..U+001F and (with ensure_ascii) everything above U+007F, but
    # leaves DEL as is; it can only occur inside a string, so escaping it here is safe.
    return text.replace("\x7f", "\\u007f")


def snapshot_lines(
    snapshot: Snapshot, selected: Callable[[ProgramRecord], bool] | None = None
) -> list[str]:
    """The lines (without newline) for one tick, one per program, in program id order;
    only the programs ``selected`` accepts when it is given."""
    return [
        encode(sample_object(sample, snapshot))
        for sample in snapshot.programs
        if selected is None or selected(sample.program)
    ]
