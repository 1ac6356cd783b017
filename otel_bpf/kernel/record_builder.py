"""Cheaper ways to build :class:`~otel_bpf.records.ProgramRecord` in the per-program hot loops.

A frozen dataclass's generated ``__init__`` stores each field through
``object.__setattr__(self, name, value)``: 18 generic attribute calls per record, about 2 µs
on a small VM, more than the rest of a pass over an idle program.  Both sampling paths build
one record per program per pass (the iterator path one per program that ran), so that cost
is paid for every program every tick.

Here a record is made as an instance of an unfrozen subclass that adds nothing to the layout,
filled with plain slot stores, then given its real class.  The result *is* a
``ProgramRecord`` (``type(r) is ProgramRecord``): equality, hash, repr and immutability are
the dataclass's own.  The fields are declared once, in :mod:`otel_bpf.records`; the builders
are written from that declaration at import (:func:`derive_builders`), so they store every
field whatever the fields are, and a record whose slots differ from its fields fails the
import instead of silently taking a slower path.

* :func:`program_record` builds a record from all its fields (a program seen for the first
  time, and every program on the syscall path, whose info arrives as one tuple);
* :func:`with_counters` and :func:`update_counters` copy a record with new counters (the
  iterator path, which reads only the counters each pass).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, fields
from operator import attrgetter
from typing import Any

from otel_bpf.records import Attachment, MapRecord, Owner, ProgramRecord

__all__ = [
    "RecordExtras",
    "derive_builders",
    "program_record",
    "static_fields",
    "update_counters",
    "with_counters",
    "with_per_cpu",
]

_COUNTERS = ("run_time_ns", "run_cnt", "recursion_misses")
"""The fields a pass changes; the others stay as they were read for a program's first pass."""
_EXTRAS = ("owners", "maps", "attachments")
"""The fields :class:`RecordExtras` adds, last in the record but for ``per_cpu`` (they have
defaults)."""


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


def record_fields(record_class: type[Any]) -> tuple[str, ...]:
    """The fields of a frozen, slotted record dataclass, in order; TypeError when its slots
    are not exactly its fields (a builder storing the fields would leave a slot unset)."""
    names = tuple(f.name for f in fields(record_class))
    slots = tuple(getattr(record_class, "__slots__", ()))
    if slots != names:
        raise TypeError(f"{record_class.__name__}: slots {slots} are not its fields {names}")
    return names


def derive_builders(
    record_class: type[Any], unfrozen: type[Any]
) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., list[Any]]]:
    """``(program_record, with_counters, update_counters)`` for ``record_class``, written
    from its field list: every builder stores every field, whatever the fields are.

    ``unfrozen`` is a subclass of ``record_class`` adding nothing but ordinary stores.  The
    code is generated (as :mod:`dataclasses` generates ``__init__``) because a loop over
    field names would cost a generic attribute call per field, which is what is avoided.
    """
    names = record_fields(record_class)
    defaults = {f.name: f.default for f in fields(record_class) if f.default is not MISSING}
    static = tuple(n for n in names if n not in _COUNTERS)
    params = ", ".join(f"{n}=_d_{n}" if n in defaults else n for n in names)
    body = "".join(f"    r.{n} = {n}\n" for n in names)
    copy = "".join(f"    r.{n} = record.{n}\n" for n in static)
    unpack = ", ".join(f"r.{n}" for n in static)
    source = f"""
def program_record({params}):
    r = _New()
{body}    r.__class__ = _Record
    return r

def with_counters(record, run_time_ns, run_cnt, recursion_misses):
    r = _New()
{copy}    r.run_time_ns = run_time_ns
    r.run_cnt = run_cnt
    r.recursion_misses = recursion_misses
    r.__class__ = _Record
    return r

def update_counters(records, statics, run_times, run_counts, recursion_misses):
    out = []
    append = out.append
    new_record = _New
    record_class = _Record
    for old, static, ns, cnt, misses in zip(
        records, statics, run_times, run_counts, recursion_misses, strict=True
    ):
        if old.run_time_ns == ns and old.run_cnt == cnt and old.recursion_misses == misses:
            append(old)
            continue
        r = new_record()
        ({unpack},) = static
        r.run_time_ns = ns
        r.run_cnt = cnt
        r.recursion_misses = misses
        r.__class__ = record_class
        append(r)
    return out
"""
    namespace: dict[str, Any] = {"_New": unfrozen, "_Record": record_class}
    namespace.update({f"_d_{n}": v for n, v in defaults.items()})
    exec(compile(source, f"<{record_class.__name__} builders>", "exec"), namespace)
    return namespace["program_record"], namespace["with_counters"], namespace["update_counters"]


_FIELDS = record_fields(ProgramRecord)
_STATIC_FIELDS = tuple(f for f in _FIELDS if f not in _COUNTERS)
assert _FIELDS[-4:] == (*_EXTRAS, "per_cpu"), (
    "owners, maps, attachments, per_cpu must stay the last fields"
)

static_fields: Callable[[ProgramRecord], tuple[Any, ...]] = attrgetter(*_STATIC_FIELDS)
"""A record's fields other than the three counters, as the tuple :func:`update_counters`
takes for each record."""

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

program_record, with_counters, update_counters = derive_builders(
    ProgramRecord, _UnfrozenProgramRecord
)

_BEFORE_PER_CPU = attrgetter(*_FIELDS[:-1])


def with_per_cpu(
    records: list[ProgramRecord],
    bases: list[ProgramRecord],
    per_cpu: Iterable[tuple[Any, ...] | None],
) -> list[ProgramRecord]:
    """``records`` with ``per_cpu`` set (None: the record is kept as it is).  A record that
    is not its base was just built by :func:`update_counters` and is seen by nobody yet, so
    it takes the field in place; a base (shared with last pass's snapshot) is copied."""
    out = []
    for record, base, cpus in zip(records, bases, per_cpu, strict=True):
        if cpus is None:
            out.append(record)
        elif record is base:
            out.append(program_record(*_BEFORE_PER_CPU(record), cpus))
        else:
            object.__setattr__(record, "per_cpu", cpus)
            out.append(record)
    return out


_BASE_FIELDS = attrgetter(*_FIELDS[:-4])
"""A record's fields before ``owners``, ``maps``, ``attachments`` and ``per_cpu``, as a tuple."""


_Attached = tuple[
    ProgramRecord,
    "tuple[Owner, ...] | None",
    "tuple[MapRecord, ...] | None",
    "tuple[Attachment, ...] | None",
    ProgramRecord,
]


class RecordExtras:
    """Attaches owners, maps and attachments to a pass's records, reusing last pass's result
    per program.

    ``dataclasses.replace`` costs a few µs per record and makes a new object every pass; here
    a program whose record, owners, maps and attachments did not change keeps the very same
    record object (consumers skip unchanged programs by identity), and a changed one is built
    in one call.
    """

    def __init__(self) -> None:
        # id -> (base record, owners, maps, attachments, the record with them)
        self._last: dict[int, _Attached] = {}

    def attach(
        self,
        records: list[ProgramRecord],
        owners: Mapping[int, tuple[Owner, ...]] | None,
        maps: Mapping[int, MapRecord] | None,
        attachments: Mapping[int, tuple[Attachment, ...]] | None = None,
    ) -> list[ProgramRecord]:
        """``records`` with ``owners`` (``()`` for a program nobody holds), the maps of
        ``map_ids`` found in ``maps`` and ``attachments`` (``()`` for a program attached
        nowhere); a None mapping leaves that field None."""
        old: dict[int, _Attached] = self._last
        last: dict[int, _Attached] = {}
        out = []
        for r in records:
            own = None if owners is None else owners.get(r.id, ())
            used = None if maps is None else tuple(maps[i] for i in r.map_ids if i in maps)
            where = None if attachments is None else attachments.get(r.id, ())
            prior = old.get(r.id)
            if (
                prior is not None
                and prior[0] is r
                and prior[1] == own
                and prior[2] == used
                and prior[3] == where
            ):
                full = prior[4]
            else:
                full = program_record(*_BASE_FIELDS(r), own, used, where, r.per_cpu)
            last[r.id] = (r, own, used, where, full)
            out.append(full)
        self._last = last
        return out
