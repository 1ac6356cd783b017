"""The iterator path's merge of a pass with the previous one: counters new, the rest kept.

Per pass, the counters (run time, run count, recursion misses), id and load time of every
program come from one ``iter/bpf_prog`` read.  The fields that do not change while a program
lives (type, name, tag, uid, sizes, verified instructions, map ids, BTF id and full name,
memlock) are read through the syscall path (:func:`~otel_bpf.kernel.programs.read_one`) once
per new program and cached by (id, load time).

The merge is shaped by what a pass usually is: the same programs as the previous pass, some
or all of which ran.  The pass is read by column (:class:`PassColumns`); when its ids and load
times equal the previous pass's (two comparisons in C), the previous records are the base,
row for row, with no per-program look-up; otherwise each program is looked up by id.  Either
way :func:`~otel_bpf.kernel.record_builder.update_counters` keeps the record of a program
whose counters did not move and copies the others with their new counters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from itertools import compress, islice, repeat
from operator import attrgetter, is_, is_not, lt, or_
from typing import Any

from otel_bpf.kernel.errors import BpfError, BpfNotFoundError
from otel_bpf.kernel.iterator.progs import PassColumns
from otel_bpf.kernel.programs import read_one
from otel_bpf.kernel.record_builder import static_fields, update_counters, with_per_cpu
from otel_bpf.kernel.system import boot_time_offset
from otel_bpf.records import CpuCounters, ProgramRecord

ReadStatic = Callable[..., ProgramRecord]
"""``read_static(prog_id, *, boot_offset=...)``: a program's record read through syscalls."""


@dataclass(slots=True)
class _LastPass:
    """The previous pass: its columns, the rows left out (own programs, programs that could
    not be read) and the records of the others, in row order."""

    columns: PassColumns
    dropped: list[int]
    records: list[ProgramRecord]
    statics: list[tuple[Any, ...]]  # static_fields() of each record
    memlock: bool
    cpus: tuple[int, ...] | None  # the per-CPU block's CPUs, None without one


class PassMerger:
    """Turns each pass's bytes into records, reusing what the previous pass built.

    ``read_static`` reads a program not seen before (the syscall path's
    :func:`~otel_bpf.kernel.programs.read_one`); ``boot_offset`` gives the wall-clock time of
    boot for its load time.  Merges run one at a time (the source holds its lock).
    """

    def __init__(
        self,
        read_static: ReadStatic = read_one,
        boot_offset: Callable[[], float] = boot_time_offset,
    ) -> None:
        self._read_static = read_static
        self._boot_offset = boot_offset
        # id -> (load time in ns since boot, the record read through the syscall path)
        self._static: dict[int, tuple[int, ProgramRecord]] = {}
        self._last: _LastPass | None = None

    @property
    def known_ids(self) -> frozenset[int]:
        """Programs whose static facts are cached (those of the last pass)."""
        return frozenset(self._static)

    def merge(
        self,
        data: bytes,
        memlock: bool,
        skip: frozenset[int] = frozenset(),
        cpus: Sequence[int] | None = None,
    ) -> tuple[list[ProgramRecord], list[str]]:
        """The records of pass ``data`` (sorted by id) and per-program errors; ``skip``: ids
        left out (the source's own programs); ``cpus``: the CPUs of each record's per-CPU
        block (the per-CPU variant's pass; None for the default one)."""
        # Runs every pass: per program, only the counters become Python objects, and a record
        # only for a program that ran.  ``skip``: ids left out (the source's own programs).
        cpu_list = None if cpus is None else tuple(cpus)
        columns = PassColumns(data, 0 if cpu_list is None else len(cpu_list))
        own_rows = columns.rows_of(skip)
        errors: list[str] = []
        last = self._last
        if (
            last is not None
            and last.memlock == memlock
            and last.cpus == cpu_list
            and last.dropped == own_rows
            and columns.same_programs(last.columns)
        ):
            # The same programs as last pass, in id order: row for row, last pass's records.
            bases, statics, dropped, in_order = last.records, last.statics, own_rows, True
        else:
            bases, dropped, errors = self._bases_after_change(columns, own_rows, memlock, cpu_list)
            statics = list(map(static_fields, bases))
            ids = columns.ids.tolist()
            in_order = all(map(lt, ids, islice(ids, 1, None)))
        records = update_counters(bases, statics, *columns.counters(dropped))
        if cpu_list is not None:
            records = _with_per_cpu(records, bases, columns, dropped, cpu_list)
        if in_order:
            self._last = _LastPass(columns, dropped, records, statics, memlock, cpu_list)
        else:
            # The kernel walks its idr in id order; should that ever change, records are
            # sorted here and every pass looks programs up by id.
            records.sort(key=_by_id)
            self._last = None
        return records, errors

    def _bases_after_change(
        self,
        columns: PassColumns,
        own_rows: list[int],
        memlock: bool,
        cpus: tuple[int, ...] | None,
    ) -> tuple[list[ProgramRecord], list[int], list[str]]:
        """Each program's record to update, looked up by id: last pass's record, or the
        static one (read now for a program not seen before); the rows left out."""
        last = self._last
        previous: dict[int, ProgramRecord] = {}
        if last is not None and last.memlock == memlock and last.cpus == cpus:
            left_out = set(last.dropped)
            ids = (i for row, i in enumerate(last.columns.ids.tolist()) if row not in left_out)
            previous = dict(zip(ids, last.records, strict=True))
        known, static = self._static, {}
        bases: list[ProgramRecord] = []
        dropped: list[int] = []
        errors: list[str] = []
        boot_offset: float | None = None
        own = set(own_rows)
        rows = zip(columns.ids.tolist(), columns.load_times.tolist(), strict=True)
        for row, (prog_id, load_time) in enumerate(rows):
            if row in own:
                dropped.append(row)
                continue
            entry = known.get(prog_id)
            if entry is not None and entry[0] == load_time:
                base = previous.get(prog_id)
            else:  # new, or the id now names another program
                if boot_offset is None:
                    boot_offset = self._boot_offset()
                try:
                    entry = (load_time, self._read_static(prog_id, boot_offset=boot_offset))
                except BpfNotFoundError:
                    dropped.append(row)  # unloaded since the walk saw it
                    continue
                except (BpfError, OSError) as err:
                    errors.append(f"program {prog_id}: {err}")
                    dropped.append(row)
                    continue
                base = None
            if base is None:
                base = entry[1] if memlock else _without_memlock(entry[1])
            static[prog_id] = entry
            bases.append(base)
        self._static = static  # forget programs that are gone
        return bases, dropped, errors


def _with_per_cpu(
    records: list[ProgramRecord],
    bases: list[ProgramRecord],
    columns: PassColumns,
    dropped: list[int],
    cpus: tuple[int, ...],
) -> list[ProgramRecord]:
    """``records`` with their per-CPU counters.  A record update_counters kept as it was
    (its totals did not move) keeps its per-CPU tuple too, once it has one: a CPU's counters
    only grow, so equal sums mean equal parts.  Only the others (a copy update_counters just
    made, which still holds its base's tuple, or a base seen for the first time, which has
    none) get new tuples.  Both the scan and the building run by column in C: per program,
    Python does no more than pick the tuple or None."""
    fresh = map(is_not, records, bases)
    without = map(is_, map(_PER_CPU, records), repeat(None))
    wanted = list(map(or_, fresh, without))
    if not any(wanted):
        return records
    per_cpu_columns = []
    for index, cpu in enumerate(cpus):
        runs, times, misses = columns.cpu_column(index)
        for row in reversed(dropped):  # ascending rows: delete from the end
            del runs[row], times[row], misses[row]
        picked = zip(
            repeat(cpu), compress(times, wanted), compress(runs, wanted), compress(misses, wanted)
        )
        # tuple.__new__ straight from C: CpuCounters' own __new__ is a Python function.
        per_cpu_columns.append(map(_cpu_counters, picked))
    built = zip(*per_cpu_columns, strict=True)
    per_cpu = [next(built) if w else None for w in wanted]
    return with_per_cpu(records, bases, per_cpu)


_PER_CPU = attrgetter("per_cpu")
_cpu_counters = partial(tuple.__new__, CpuCounters)


def _by_id(record: ProgramRecord) -> int:
    return record.id


def _without_memlock(record: ProgramRecord) -> ProgramRecord:
    return record if record.memlock_bytes is None else replace(record, memlock_bytes=None)
