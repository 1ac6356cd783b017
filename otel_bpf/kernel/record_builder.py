"""Cheaper ways to build :class:`~otel_bpf.records.ProgramRecord` in the per-program hot loops.

A frozen dataclass's generated ``__init__`` stores each field through
``object.__setattr__(self, name, value)``: 18 generic attribute calls per record, about 2 µs
on a small VM, more than the rest of a pass over an idle program.  Both sampling paths build
one record per program per pass (the iterator path one per program that ran), so that cost
is paid for every program every tick.

Here a record is made as an instance of an unfrozen subclass that adds nothing to the layout,
filled with plain slot stores, then given its real class.  The result *is* a
``ProgramRecord`` (``type(r) is ProgramRecord``): equality, hash, repr and immutability are
the dataclass's own.  The builders store every field of :data:`_FIELDS`, checked against the
dataclass once at import; should the record's fields ever differ, the dataclass constructor
and ``dataclasses.replace`` are used instead.

* :func:`program_record` builds a record from all its fields (a program seen for the first
  time, and every program on the syscall path, whose info arrives as one tuple);
* :func:`with_counters` and :func:`update_counters` copy a record with new counters (the
  iterator path, which reads only the counters each pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import fields, replace
from operator import attrgetter
from typing import Any

from otel_bpf.records import MapRecord, Owner, ProgramRecord

__all__ = [
    "RecordExtras",
    "program_record",
    "static_fields",
    "update_counters",
    "with_counters",
]

_FIELDS = (
    "id",
    "type",
    "type_id",
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
    "map_ids",
    "btf_id",
    "memlock_bytes",
    "owners",
    "maps",
)


class _UnfrozenProgramRecord(ProgramRecord):
    """A ProgramRecord whose slots take ordinary stores; never seen outside this module.

    A subclass adding nothing (``__slots__ = ()``) has its parent's very layout, so CPython
    accepts the ``__class__`` switch to the parent without comparing slot lists (about half
    the cost of switching from a look-alike class).  ``object``'s ``__setattr__`` and
    ``__delattr__`` (both, as they share one C slot) undo the frozen ones, which makes the
    stores plain slot writes; ``object.__init__`` makes a call of the class only allocate.
    """

    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    __init__ = object.__init__


def _layout_matches() -> bool:
    """The builders below store every field: no slot of a record they make is left unset."""
    names = tuple(f.name for f in fields(ProgramRecord))
    slots = getattr(ProgramRecord, "__slots__", None)
    return names == _FIELDS and tuple(slots or ()) == _FIELDS


FAST = _layout_matches()
"""The slot-store construction is in use (tests check it stays so)."""


def _program_record_by_slots(
    id: int,
    type: str,
    type_id: int,
    name: str,
    tag: str,
    run_time_ns: int,
    run_cnt: int,
    recursion_misses: int | None,
    load_time: float,
    uid: int,
    verified_insns: int | None,
    xlated_size: int,
    jited_size: int,
    map_ids: tuple[int, ...],
    btf_id: int,
    memlock_bytes: int | None,
    owners: tuple[Owner, ...] | None = None,
    maps: tuple[MapRecord, ...] | None = None,
) -> ProgramRecord:
    r: Any = _UnfrozenProgramRecord()
    r.id = id
    r.type = type
    r.type_id = type_id
    r.name = name
    r.tag = tag
    r.run_time_ns = run_time_ns
    r.run_cnt = run_cnt
    r.recursion_misses = recursion_misses
    r.load_time = load_time
    r.uid = uid
    r.verified_insns = verified_insns
    r.xlated_size = xlated_size
    r.jited_size = jited_size
    r.map_ids = map_ids
    r.btf_id = btf_id
    r.memlock_bytes = memlock_bytes
    r.owners = owners
    r.maps = maps
    r.__class__ = ProgramRecord
    return r  # type: ignore[no-any-return]


def _with_counters_by_slots(
    record: ProgramRecord, run_time_ns: int, run_cnt: int, recursion_misses: int | None
) -> ProgramRecord:
    r: Any = _UnfrozenProgramRecord()
    r.id = record.id
    r.type = record.type
    r.type_id = record.type_id
    r.name = record.name
    r.tag = record.tag
    r.run_time_ns = run_time_ns
    r.run_cnt = run_cnt
    r.recursion_misses = recursion_misses
    r.load_time = record.load_time
    r.uid = record.uid
    r.verified_insns = record.verified_insns
    r.xlated_size = record.xlated_size
    r.jited_size = record.jited_size
    r.map_ids = record.map_ids
    r.btf_id = record.btf_id
    r.memlock_bytes = record.memlock_bytes
    r.owners = record.owners
    r.maps = record.maps
    r.__class__ = ProgramRecord
    return r  # type: ignore[no-any-return]


_COUNTERS = ("run_time_ns", "run_cnt", "recursion_misses")
_STATIC_FIELDS = tuple(f for f in _FIELDS if f not in _COUNTERS)

static_fields: Callable[[ProgramRecord], tuple[Any, ...]] = attrgetter(*_STATIC_FIELDS)
"""A record's fields other than the three counters, as the tuple :func:`update_counters`
takes for each record."""


def _update_counters_by_slots(
    records: Iterable[ProgramRecord],
    statics: Iterable[tuple[Any, ...]],
    run_times: Iterable[int],
    run_counts: Iterable[int],
    recursion_misses: Iterable[int | None],
) -> list[ProgramRecord]:
    # The copy inlined, its static fields stored from one tuple unpack: on a host where
    # programs run this loop makes a record per program per pass, and a call per record, or
    # a load per field from the old record, would cost about a tenth more.
    out: list[ProgramRecord] = []
    append = out.append
    new_record: Callable[[], Any] = _UnfrozenProgramRecord
    record_class = ProgramRecord
    for old, static, ns, cnt, misses in zip(
        records, statics, run_times, run_counts, recursion_misses, strict=True
    ):
        if old.run_time_ns == ns and old.run_cnt == cnt and old.recursion_misses == misses:
            append(old)
            continue
        r = new_record()
        # In the order of _STATIC_FIELDS (a test gives every field its own value).
        (
            r.id,
            r.type,
            r.type_id,
            r.name,
            r.tag,
            r.load_time,
            r.uid,
            r.verified_insns,
            r.xlated_size,
            r.jited_size,
            r.map_ids,
            r.btf_id,
            r.memlock_bytes,
            r.owners,
            r.maps,
        ) = static
        r.run_time_ns = ns
        r.run_cnt = cnt
        r.recursion_misses = misses
        r.__class__ = record_class
        append(r)
    return out


# The dataclass's own ways, used only if records.py changed without this module.


def _with_counters_by_replace(
    record: ProgramRecord, run_time_ns: int, run_cnt: int, recursion_misses: int | None
) -> ProgramRecord:
    return replace(
        record, run_time_ns=run_time_ns, run_cnt=run_cnt, recursion_misses=recursion_misses
    )


def _update_counters_by_replace(
    records: Iterable[ProgramRecord],
    statics: Iterable[tuple[Any, ...]],
    run_times: Iterable[int],
    run_counts: Iterable[int],
    recursion_misses: Iterable[int | None],
) -> list[ProgramRecord]:
    return [
        old
        if old.run_time_ns == ns and old.run_cnt == cnt and old.recursion_misses == misses
        else _with_counters_by_replace(old, ns, cnt, misses)
        for old, ns, cnt, misses in zip(
            records, run_times, run_counts, recursion_misses, strict=True
        )
    ]


program_record: Callable[..., ProgramRecord]
"""``ProgramRecord(*fields)`` (positional, in field order), several times cheaper."""

with_counters: Callable[[ProgramRecord, int, int, int | None], ProgramRecord]
"""``with_counters(record, run_time_ns, run_cnt, recursion_misses)``: ``record`` with those
three fields replaced (a new record, like ``dataclasses.replace``), several times cheaper."""

update_counters: Callable[
    [
        Iterable[ProgramRecord],
        Iterable[tuple[Any, ...]],
        Iterable[int],
        Iterable[int],
        Iterable[int | None],
    ],
    list[ProgramRecord],
]
"""``update_counters(records, statics, run_times, run_counts, recursion_misses)``: for each
record and the counters its program has now, the record itself when they are unchanged
(consumers skip unchanged programs by identity), else a copy with the new counters, like
:func:`with_counters`; in one loop.  ``statics`` holds each record's :func:`static_fields`."""

if FAST:
    program_record = _program_record_by_slots
    with_counters = _with_counters_by_slots
    update_counters = _update_counters_by_slots
else:
    program_record = ProgramRecord
    with_counters = _with_counters_by_replace
    update_counters = _update_counters_by_replace

_BASE_FIELDS = attrgetter(*_FIELDS[:-2])
"""A record's fields before ``owners`` and ``maps``, as a tuple."""


_Attached = tuple[
    ProgramRecord, "tuple[Owner, ...] | None", "tuple[MapRecord, ...] | None", ProgramRecord
]


class RecordExtras:
    """Attaches owners and maps to a pass's records, reusing last pass's result per program.

    ``dataclasses.replace`` costs a few µs per record and makes a new object every pass; here
    a program whose record, owners and maps did not change keeps the very same record object
    (consumers skip unchanged programs by identity), and a changed one is built in one call.
    """

    def __init__(self) -> None:
        # id -> (base record, owners, maps, the record with them)
        self._last: dict[int, _Attached] = {}

    def attach(
        self,
        records: list[ProgramRecord],
        owners: Mapping[int, tuple[Owner, ...]] | None,
        maps: Mapping[int, MapRecord] | None,
    ) -> list[ProgramRecord]:
        """``records`` with ``owners`` (``()`` for a program nobody holds) and the maps of
        ``map_ids`` found in ``maps``; a None mapping leaves that field None."""
        old: dict[int, _Attached] = self._last
        last: dict[int, _Attached] = {}
        out = []
        for r in records:
            own = None if owners is None else owners.get(r.id, ())
            used = None if maps is None else tuple(maps[i] for i in r.map_ids if i in maps)
            prior = old.get(r.id)
            if prior is not None and prior[0] is r and prior[1] == own and prior[2] == used:
                full = prior[3]
            else:
                full = program_record(*_BASE_FIELDS(r), own, used)
            last[r.id] = (r, own, used, full)
            out.append(full)
        self._last = last
        return out
