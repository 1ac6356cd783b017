"""The iterator sampling path: ``IteratorSource.read()`` returns what the syscall path does.

Per pass, the counters (run time, run count, recursion misses), id and load time of every
program come from one ``iter/bpf_prog`` read.  The fields that do not change while a program
lives (type, name, tag, uid, sizes, verified instructions, map ids, BTF id and full name,
memlock) are read through the syscall path (:func:`~otel_bpf.kernel.programs.read_one`) once
per new program and cached by (id, load time), so a pass costs one ``ITER_CREATE`` + a few
``read()`` calls however many programs are loaded.

The merge is shaped by what a pass usually is: the same programs as the previous pass, some
or all of which ran.  The pass is read by column (:class:`PassColumns`); when its ids and load
times equal the previous pass's (two comparisons in C), the previous records are the base,
row for row, with no per-program look-up; otherwise each program is looked up by id.  Either
way :func:`~otel_bpf.kernel.record_builder.update_counters` keeps the record of a program
whose counters did not move and copies the others with their new counters.
"""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import islice
from operator import lt
from typing import Any

from otel_bpf.kernel.decorate import Decorator
from otel_bpf.kernel.errors import BpfError, BpfNotFoundError
from otel_bpf.kernel.iterator.owners import BTF_NAMES as OWNERS_BTF_NAMES
from otel_bpf.kernel.iterator.owners import OwnersIterator, OwnersLayout
from otel_bpf.kernel.iterator.progs import BTF_NAMES as PROG_BTF_NAMES
from otel_bpf.kernel.iterator.progs import (
    PassColumns,
    ProgIterator,
    ProgIterLayout,
    ProgRecordRaw,
)
from otel_bpf.kernel.programs import read_one
from otel_bpf.kernel.record_builder import static_fields, update_counters
from otel_bpf.kernel.source import ReadResult, SamplingPath, SourceOptions
from otel_bpf.kernel.system import boot_time_offset
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf
from otel_bpf.records import Owner, ProgramRecord

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class _LastPass:
    """The previous pass: its columns, the rows left out (own programs, programs that could
    not be read) and the records of the others, in row order."""

    columns: PassColumns
    dropped: list[int]
    records: list[ProgramRecord]
    statics: list[tuple[Any, ...]]  # static_fields() of each record
    memlock: bool


class IteratorSource:
    """The iterator path: a :class:`~otel_bpf.kernel.source.ProgramSource` that owns the
    iterator programs' fds (close it, or use it as a context manager).

    ``layout_overrides`` and ``owners_layout_overrides`` replace ids/offsets read from BTF
    (tests use them to make the self-check or the owners calibration fail);
    ``use_rdonly_cast`` forces a variant (None: the kfunc when present).
    """

    path: SamplingPath = "iterator"

    def __init__(
        self,
        options: SourceOptions | None = None,
        *,
        layout_overrides: Mapping[str, int] | None = None,
        owners_layout_overrides: Mapping[str, int] | None = None,
        use_rdonly_cast: bool | None = None,
        cpus: Sequence[int] | None = None,
    ) -> None:
        self._options = options or SourceOptions()
        with VmlinuxBtf() as btf:
            btf.prefetch(PROG_BTF_NAMES + OWNERS_BTF_NAMES)
            layout = ProgIterLayout.from_btf(btf, use_rdonly_cast=use_rdonly_cast)
            try:
                self._owners_layout: OwnersLayout | None = OwnersLayout.from_btf(btf)
                self._owners_error: str | None = None
            except BpfError as err:
                self._owners_layout, self._owners_error = None, str(err)
        if layout_overrides:
            layout = layout.with_overrides(layout_overrides)
        if owners_layout_overrides and self._owners_layout is not None:
            self._owners_layout = replace(self._owners_layout, **owners_layout_overrides)
        self.layout = layout
        self._lock = threading.Lock()
        self._progs = ProgIterator(layout, cpus)
        self._owners_iter: OwnersIterator | None = None
        # id -> (load time in ns since boot, the record read through the syscall path)
        self._static: dict[int, tuple[int, ProgramRecord]] = {}
        self._last: _LastPass | None = None
        self._decorator = Decorator(self._owners_pass)
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------

    @property
    def options(self) -> SourceOptions:
        """What :meth:`read` reads when not told otherwise."""
        return self._options

    @property
    def variant(self) -> str:
        """``rdonly_cast`` or ``probe_read``."""
        return self.layout.variant

    @property
    def self_ids(self) -> frozenset[int]:
        """Ids of this source's own iterator programs."""
        ids = {self._progs.prog_id}
        if self._owners_iter is not None:
            ids.add(self._owners_iter.prog_id)
        return frozenset(ids)

    @property
    def owners_path(self) -> str:
        """``iterator`` once the task_file program is loaded, else ``procfs``."""
        return "iterator" if self._owners_iter is not None else "procfs"

    def close(self) -> None:
        """Unload the iterator programs (idempotent)."""
        with self._lock:
            self._closed = True
            self._progs.close()
            if self._owners_iter is not None:
                self._owners_iter.close()

    def __enter__(self) -> IteratorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- passes --------------------------------------------------------------------------

    def read_raw(self) -> list[ProgRecordRaw]:
        """One iterator pass, undecorated: what the kernel walk reports (own programs too)."""
        with self._lock:
            return self._progs.read()

    def read(self, options: SourceOptions | None = None) -> ReadResult:
        """One pass over every program, sorted by id (``options`` default to the source's)."""
        options = options or self._options
        with self._lock:
            if self._closed:
                raise BpfError(errno.EBADF, "the iterator source is closed")
            skip = frozenset() if options.include_self else self.self_ids
            records, errors = self._merge(self._progs.read_raw(), options.memlock, skip)
        return ReadResult(self._decorator.decorate(records, errors, options), errors)

    def _merge(
        self, data: bytes, memlock: bool, skip: frozenset[int] = frozenset()
    ) -> tuple[list[ProgramRecord], list[str]]:
        # Runs every pass: per program, only the counters become Python objects, and a record
        # only for a program that ran.  ``skip``: ids left out (the source's own programs).
        columns = PassColumns(data)
        own_rows = columns.rows_of(skip)
        errors: list[str] = []
        last = self._last
        if (
            last is not None
            and last.memlock == memlock
            and last.dropped == own_rows
            and columns.same_programs(last.columns)
        ):
            # The same programs as last pass, in id order: row for row, last pass's records.
            bases, statics, dropped, in_order = last.records, last.statics, own_rows, True
        else:
            bases, dropped, errors = self._bases_after_change(columns, own_rows, memlock)
            statics = list(map(static_fields, bases))
            ids = columns.ids.tolist()
            in_order = all(map(lt, ids, islice(ids, 1, None)))
        records = update_counters(bases, statics, *columns.counters(dropped))
        if in_order:
            self._last = _LastPass(columns, dropped, records, statics, memlock)
        else:
            # The kernel walks its idr in id order; should that ever change, records are
            # sorted here and every pass looks programs up by id.
            records.sort(key=_by_id)
            self._last = None
        return records, errors

    def _bases_after_change(
        self, columns: PassColumns, own_rows: list[int], memlock: bool
    ) -> tuple[list[ProgramRecord], list[int], list[str]]:
        """Each program's record to update, looked up by id: last pass's record, or the
        static one (read now for a program not seen before); the rows left out."""
        last = self._last
        previous: dict[int, ProgramRecord] = {}
        if last is not None and last.memlock == memlock:
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
                    boot_offset = boot_time_offset()
                try:
                    entry = (load_time, read_one(prog_id, boot_offset=boot_offset))
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

    def _owners_pass(self) -> dict[int, tuple[Owner, ...]]:
        with self._lock:
            return self._owners_locked()

    def _owners_locked(self) -> dict[int, tuple[Owner, ...]]:
        if self._owners_iter is None and self._owners_error is None:
            assert self._owners_layout is not None
            try:
                self._owners_iter = OwnersIterator(self._owners_layout)
            except (BpfError, OSError) as err:
                self._owners_error = str(err).splitlines()[0]
                _log.warning(
                    "process owners: scanning /proc (iter/task_file unavailable: %s)",
                    self._owners_error,
                )
        if self._owners_iter is not None:
            try:
                return self._owners_iter.owners()
            except (BpfError, OSError) as err:
                # Once, then /proc for good: a warning per pass would flood the log.
                self._owners_error = str(err)
                self._owners_iter.close()
                self._owners_iter = None
                _log.warning("process owners: scanning /proc (iter/task_file read failed: %s)", err)
        from otel_bpf.kernel.owners import scan_owners

        return scan_owners()


def _by_id(record: ProgramRecord) -> int:
    return record.id


def _without_memlock(record: ProgramRecord) -> ProgramRecord:
    return record if record.memlock_bytes is None else replace(record, memlock_bytes=None)
