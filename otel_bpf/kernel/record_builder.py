"""A cheaper way to build :class:`~otel_bpf.records.ProgramRecord` in the per-program hot loop.

A frozen dataclass's generated ``__init__`` stores each field through
``object.__setattr__(self, name, value)``: 18 generic attribute calls per record, about 2 µs
on a small VM, more than the rest of a pass over an idle program.  Both sampling paths build
one record per program per pass (the iterator path one per program that ran), so that cost
is paid for every program every tick.

:func:`program_record` fills the same slots with plain stores on an unfrozen class of
identical layout (the same ``__slots__``, nothing else), then gives the object its real class.
The result *is* a ``ProgramRecord`` (``type(r) is ProgramRecord``): equality, hash, repr and
immutability are the dataclass's own.  CPython allows the ``__class__`` switch exactly when the
two layouts are the same, which is checked once at import; if the record's fields ever differ
from :data:`_FIELDS`, the dataclass constructor is used instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from operator import attrgetter

from otel_bpf.records import MapRecord, Owner, ProgramRecord

__all__ = ["RecordExtras", "program_record"]

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


class _UnfrozenProgramRecord:
    """ProgramRecord's slot layout with ordinary attribute stores; never seen outside."""

    __slots__ = _FIELDS

    def __init__(
        self,
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
    ) -> None:
        self.id = id
        self.type = type
        self.type_id = type_id
        self.name = name
        self.tag = tag
        self.run_time_ns = run_time_ns
        self.run_cnt = run_cnt
        self.recursion_misses = recursion_misses
        self.load_time = load_time
        self.uid = uid
        self.verified_insns = verified_insns
        self.xlated_size = xlated_size
        self.jited_size = jited_size
        self.map_ids = map_ids
        self.btf_id = btf_id
        self.memlock_bytes = memlock_bytes
        self.owners = owners
        self.maps = maps
        # Same slots, same base: CPython accepts the switch (and refuses it otherwise).
        self.__class__ = ProgramRecord  # type: ignore[assignment]


def _layout_matches() -> bool:
    names = tuple(f.name for f in fields(ProgramRecord))
    slots = getattr(ProgramRecord, "__slots__", None)
    return names == _FIELDS and tuple(slots or ()) == _FIELDS == _UnfrozenProgramRecord.__slots__


program_record: Callable[..., ProgramRecord]
"""``ProgramRecord(*fields)`` (positional, in field order), several times cheaper."""

# The dataclass constructor only if records.py changed without this module.
program_record = (
    _UnfrozenProgramRecord  # type: ignore[assignment]
    if _layout_matches()
    else ProgramRecord
)

FAST = program_record is not ProgramRecord
"""The slot-store construction is in use (tests check it stays so)."""

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
