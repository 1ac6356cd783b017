"""The iterator sampling path: ``IteratorSource.read_all()`` returns what the syscall path does.

Per pass, the counters (run time, run count, recursion misses), id, type and kernel name of
every program come from one ``iter/bpf_prog`` read.  The fields that do not change while a
program lives (tag, uid, sizes, verified instructions, map ids, BTF id and full name, memlock)
are read through the syscall path once per new program and cached by (id, load time), so a
pass costs one ``ITER_CREATE`` + a few ``read()`` calls however many programs are loaded.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter

from otel_bpf.kernel._uapi import BPF_OBJ_NAME_LEN, Cmd, GetIdAttr, InfoByFdAttr, ProgInfo
from otel_bpf.kernel.btf import program_btf_name
from otel_bpf.kernel.errors import BpfError, BpfNotFoundError
from otel_bpf.kernel.fdinfo import memlock_of_fd
from otel_bpf.kernel.iterator.owners import BTF_NAMES as OWNERS_BTF_NAMES
from otel_bpf.kernel.iterator.owners import OwnersIterator, OwnersLayout
from otel_bpf.kernel.iterator.progs import BTF_NAMES as PROG_BTF_NAMES
from otel_bpf.kernel.iterator.progs import RECORD, ProgIterator, ProgIterLayout, ProgRecordRaw
from otel_bpf.kernel.programs import ReadResult, record_from_info
from otel_bpf.kernel.record_builder import RecordExtras, program_record
from otel_bpf.kernel.syscall import bpf, close
from otel_bpf.kernel.system import boot_time_offset
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf
from otel_bpf.records import MapRecord, Owner, ProgramRecord

_log = logging.getLogger(__name__)

_INFO_SIZE = ctypes.sizeof(ProgInfo)
_MAP_IDS_CAPACITY = 64


@dataclass(frozen=True)
class IteratorReadResult(ReadResult):
    """A :class:`ReadResult` that says it came from the iterator path."""

    sampling_path: str = "iterator"


@dataclass(slots=True)
class _Cached:
    """Static fields of one program, and the last record built from them.

    ``head`` and ``tail`` are the record's fields before and after the three counters, so
    a new record is one call: ``program_record(*head, ns, cnt, misses, *tail)``.
    """

    load_time_ns: int
    head: tuple[object, ...]
    tail: tuple[object, ...]
    last: ProgramRecord

    @classmethod
    def of(cls, load_time_ns: int, static: ProgramRecord) -> _Cached:
        fields = _RECORD_FIELDS(static)
        return cls(load_time_ns, fields[:_COUNTERS], fields[_COUNTERS + 3 :], static)


# ProgramRecord's fields up to memlock_bytes; the counters start at run_time_ns.
_RECORD_FIELDS = attrgetter(
    "id", "type", "type_id", "name", "tag", "run_time_ns", "run_cnt", "recursion_misses",
    "load_time", "uid", "verified_insns", "xlated_size", "jited_size", "map_ids", "btf_id",
    "memlock_bytes",
)  # fmt: skip
_COUNTERS = 5
# The iterator's record without the fields the merge does not need (type and name come with
# the static fields), so no bytes object is made per program.
_MERGE_RECORD = struct.Struct("<I4x16xQQQQ")
assert _MERGE_RECORD.size == RECORD.size


class IteratorSource:
    """Owns the iterator programs' fds; a context manager, and a zero-argument callable for
    :class:`otel_bpf.sampler.Sampler` (``source=``) using the options given here.

    ``layout_overrides`` and ``owners_layout_overrides`` replace ids/offsets read from BTF
    (tests use them to make the self-check or the owners calibration fail);
    ``use_rdonly_cast`` forces a variant (None: the kfunc when present).
    """

    def __init__(
        self,
        *,
        owners: bool = False,
        maps: bool = False,
        memlock: bool = True,
        include_self: bool = False,
        layout_overrides: Mapping[str, int] | None = None,
        owners_layout_overrides: Mapping[str, int] | None = None,
        use_rdonly_cast: bool | None = None,
        cpus: Sequence[int] | None = None,
    ) -> None:
        self.owners = owners
        self.maps = maps
        self.memlock = memlock
        self.include_self = include_self
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
        self._cache: dict[int, _Cached] = {}
        self._extras_lock = threading.Lock()
        self._extras = RecordExtras()
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------

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

    def __call__(self) -> IteratorReadResult:
        return self.read_all()

    # -- passes --------------------------------------------------------------------------

    def read_raw(self) -> list[ProgRecordRaw]:
        """One iterator pass, undecorated: what the kernel walk reports (own programs too)."""
        with self._lock:
            return self._progs.read()

    def read_all(
        self,
        *,
        owners: bool | None = None,
        maps: bool | None = None,
        memlock: bool | None = None,
        include_self: bool | None = None,
    ) -> IteratorReadResult:
        """One pass over every program, sorted by id; None options take the constructor's."""
        owners = self.owners if owners is None else owners
        maps = self.maps if maps is None else maps
        memlock = self.memlock if memlock is None else memlock
        include_self = self.include_self if include_self is None else include_self
        with self._lock:
            if self._closed:
                raise BpfError(errno.EBADF, "the iterator source is closed")
            skip = frozenset() if include_self else self.self_ids
            records, errors = self._merge(self._progs.read_raw(), memlock, skip)
            by_prog = self._owners_pass() if owners else None
        found: dict[int, MapRecord] | None = None
        if maps:
            from otel_bpf.kernel.maps import read_maps

            found, map_errors = read_maps(i for r in records for i in r.map_ids)
            errors.extend(map_errors)
        if owners or maps:
            with self._extras_lock:
                records = self._extras.attach(records, by_prog, found)
        return IteratorReadResult(records, errors)

    def _merge(
        self, data: bytes, memlock: bool, skip: frozenset[int] = frozenset()
    ) -> tuple[list[ProgramRecord], list[str]]:
        # Runs for every program every pass: unpacked tuples, an int-keyed cache, and the
        # previous record reused while a program's counters do not move.  ``skip``: ids left
        # out (the source's own programs).
        records: list[ProgramRecord] = []
        errors: list[str] = []
        cache = self._cache
        seen: dict[int, _Cached] = {}
        boot_offset: float | None = None
        usable = len(data) - len(data) % RECORD.size
        previous_id = -1
        in_order = True  # the kernel walks its idr in id order; sort only if that changes
        for prog_id, load_time, ns, cnt, misses in _MERGE_RECORD.iter_unpack(data[:usable]):
            if prog_id in skip:
                continue
            entry = cache.get(prog_id)
            if entry is None or entry.load_time_ns != load_time:
                if boot_offset is None:
                    boot_offset = boot_time_offset()
                try:
                    static = _static_record(prog_id, boot_offset)
                except BpfNotFoundError:
                    continue  # unloaded since the walk saw it
                except (BpfError, OSError) as err:
                    errors.append(f"program {prog_id}: {err}")
                    continue
                entry = _Cached.of(load_time, static)
            last = entry.last
            if last.run_time_ns != ns or last.run_cnt != cnt or last.recursion_misses != misses:
                last = entry.last = program_record(*entry.head, ns, cnt, misses, *entry.tail)
            seen[prog_id] = entry
            records.append(last if memlock else _without_memlock(last))
            if prog_id < previous_id:
                in_order = False
            previous_id = prog_id
        if not in_order:
            records.sort(key=_by_id)
        self._cache = seen  # forget programs that are gone
        return records, errors

    def _owners_pass(self) -> dict[int, tuple[Owner, ...]]:
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


def _static_record(prog_id: int, boot_offset: float) -> ProgramRecord:
    """One program's record through the syscall path (counters as of now, static fields)."""
    fd = bpf(Cmd.PROG_GET_FD_BY_ID, GetIdAttr(prog_id, 0, 0), f"program {prog_id}")
    try:
        info = ProgInfo()
        map_ids = (ctypes.c_uint32 * _MAP_IDS_CAPACITY)()
        info.nr_map_ids = _MAP_IDS_CAPACITY
        info.map_ids = ctypes.addressof(map_ids)
        attr = InfoByFdAttr(fd, _INFO_SIZE, ctypes.addressof(info))
        bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, f"program {prog_id}")
        count = info.nr_map_ids
        if count > _MAP_IDS_CAPACITY:
            map_ids = (ctypes.c_uint32 * count)()
            info2 = ProgInfo()
            info2.nr_map_ids = count
            info2.map_ids = ctypes.addressof(map_ids)
            bpf(Cmd.OBJ_GET_INFO_BY_FD, InfoByFdAttr(fd, _INFO_SIZE, ctypes.addressof(info2)))
            count = min(count, info2.nr_map_ids)
        name = None
        if len(info.name) == BPF_OBJ_NAME_LEN - 1 and info.btf_id and info.nr_func_info:
            try:
                name = program_btf_name(fd, info.btf_id, info.func_info_rec_size)
            except (BpfError, ValueError):
                name = None  # bpftool shows the kernel name then, and so does the syscall path
        return record_from_info(
            info,
            attr.info_len,
            boot_offset=boot_offset,
            map_ids=tuple(map_ids[:count]),
            name=name,
            memlock=memlock_of_fd(fd),
        )
    finally:
        close(fd)
