"""``--json`` output: one JSON object per program per tick (JSON Lines), a stable schema.

Field names follow the kernel's (``run_time_ns``, ``run_cnt``, ...) so scripts written
against ``bpftool prog show -j`` read naturally.  Figures that are not known yet (a
program's first sample, a period without runs) are ``null``, never 0.  Text the kernel or a
process chose (program names, ``comm``, cgroup paths) is escaped to plain ASCII, so no
control character ever reaches the terminal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import fields as dataclass_fields
from datetime import datetime, timezone
from typing import Any

from otel_bpf.records import Attachment, Owner, ProgramRecord
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
    "per_cpu",
    "attachments",
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


def _owners(owners: tuple[Owner, ...] | None) -> list[dict[str, object]] | None:
    if owners is None:
        return None
    return [
        {
            "pid": owner.pid,
            "comm": owner.comm,
            "via": list(owner.via),
            "cgroup": owner.workload.cgroup,
            "container_id": owner.workload.container_id,
            "pod_uid": owner.workload.pod_uid,
        }
        for owner in owners
    ]


def _attachments(attachments: tuple[Attachment, ...] | None) -> list[dict[str, object]] | None:
    if attachments is None:
        return None
    out = []
    for a in attachments:
        obj: dict[str, object] = {
            "kind": a.kind,
            "via": a.via,
            "link_id": a.link_id,
            "attach_type": a.attach_type,
            "target": a.target,
        }
        # The structured fields that fit the kind; the ones it has no use for are left out.
        for key in _ATTACHMENT_DETAILS:
            value = getattr(a, key)
            if value is not None:
                obj[key] = value
        out.append(obj)
    return out


_ATTACHMENT_DETAILS = (
    "ifindex",
    "ifname",
    "netns",
    "direction",
    "cgroup_id",
    "cgroup_path",
    "container_id",
    "pod_uid",
    "qos_class",
    "priority",
    "map_id",
    "target_prog_id",
    "mode",
    "pid",
    "fd",
    "comm",
    "attach_flags",
)


def _per_cpu(sample: ProgramSample) -> list[dict[str, object]] | None:
    if sample.per_cpu is None:
        return None
    return [
        {
            "cpu": c.cpu,
            "run_cnt": c.run_cnt,
            "run_time_ns": c.run_time_ns,
            "recursion_misses": c.recursion_misses,
            "events_per_sec": _figure(c.events_per_sec),
            "cpu_utilization": _figure(c.cpu_utilization),
        }
        for c in sample.per_cpu
    ]


TICK_KEYS: dict[str, tuple[str, Callable[[Any], object] | None]] = {
    "timestamp": ("wall_time", rfc3339),
    "seq": ("seq", None),
}
"""The keys read from the tick's :class:`~otel_bpf.snapshot.Snapshot`: the attribute and how
it is written (None: as it is)."""

RECORD_CONVERSIONS: dict[str, Callable[[Any], object]] = {
    "load_time": rfc3339,
    "map_ids": list,
    "owners": _owners,
    "attachments": _attachments,
}
"""The :class:`ProgramRecord` fields written otherwise than as they are; every other emitted
field keeps its name and value."""

SAMPLE_WRITTEN: dict[str, Callable[[Any], object]] = {
    "per_cpu": _per_cpu,
}
"""The :class:`ProgramRecord` fields written from the whole sample: the record's counters
with the sample's figures next to them."""

RECORD_EXCLUDED: dict[str, str] = {
    "type_id": "`type` names it",
    "btf_id": "not part of the schema",
    "maps": "the schema lists `map_ids` only",
}
"""The :class:`ProgramRecord` fields left out of the schema, and why."""


def derive_sample_object(
    record_class: type[Any] = ProgramRecord, sample_class: type[Any] = ProgramSample
) -> Callable[[ProgramSample, Snapshot], dict[str, object]]:
    """``sample_object`` written from the fields of ``record_class`` and ``sample_class``:
    each key of :data:`FIELDS` is a tick key, a record field or a figure of the sample.

    TypeError when a record field is neither in :data:`FIELDS` nor in
    :data:`RECORD_EXCLUDED`, or a key of :data:`FIELDS` is none of the three: the schema and
    the record cannot drift apart silently.  The code is generated (as
    :mod:`otel_bpf.kernel.record_builder` writes its builders) so the object is one dict
    display, as cheap as a hand-written one, whatever the fields are.
    """
    record_names = tuple(f.name for f in dataclass_fields(record_class))
    figure_names = tuple(f.name for f in dataclass_fields(sample_class) if f.name != "program")
    unmapped = [n for n in record_names if n not in FIELDS and n not in RECORD_EXCLUDED]
    if unmapped:
        raise TypeError(
            f"{record_class.__name__} fields {unmapped} are neither in the --json schema "
            "(jsonl.FIELDS) nor in jsonl.RECORD_EXCLUDED"
        )
    emitted_excluded = [n for n in RECORD_EXCLUDED if n in FIELDS or n not in record_names]
    if emitted_excluded:
        raise TypeError(f"jsonl.RECORD_EXCLUDED names {emitted_excluded}: emitted or unknown")
    namespace: dict[str, Any] = {"_figure": _figure}
    items = []
    for key in FIELDS:
        if key in TICK_KEYS:
            attr, convert = TICK_KEYS[key]
            value = f"snapshot.{attr}"
        elif key in SAMPLE_WRITTEN and key in record_names:
            convert = SAMPLE_WRITTEN[key]
            value = "sample"
        elif key in record_names:
            convert = RECORD_CONVERSIONS.get(key)
            value = f"prog.{key}"
        elif key in figure_names:
            convert = _figure
            value = f"sample.{key}"
        else:
            raise TypeError(f"--json key {key!r} is no tick key, record field or figure")
        if convert is not None:
            namespace[f"_c_{key}"] = convert
            value = f"_c_{key}({value})"
        items.append(f"        {key!r}: {value},\n")
    source = (
        "def sample_object(sample, snapshot):\n"
        "    prog = sample.program\n"
        "    return {\n" + "".join(items) + "    }\n"
    )
    exec(compile(source, "<--json sample_object>", "exec"), namespace)
    function: Callable[[ProgramSample, Snapshot], dict[str, object]] = namespace["sample_object"]
    return function


sample_object = derive_sample_object()
"""``sample_object(sample, snapshot)``: the JSON object of one program in one tick (keys in
:data:`FIELDS` order)."""


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
