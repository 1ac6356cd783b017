"""One pass over every BPF program on the host: ``bpf_prog_info`` turned into records.

Enumeration is GET_NEXT_ID -> GET_FD_BY_ID -> OBJ_GET_INFO_BY_FD -> close for each program.
Programs come and go during a pass: one that vanished (ENOENT) is skipped silently, one that
fails for another reason is reported in :attr:`ReadResult.errors`, and the pass goes on.

The per-program work is kept small because it runs for every program every tick: the raw
syscall with prebuilt attrs and one reusable info buffer, one ``struct`` unpack, and the facts
that never change after load (the BTF full name: three extra syscalls and a parse; memlock:
an fdinfo read) read once per program and cached.

:func:`read_one` reads a single program by id the same way (the iterator path uses it for
programs it has not seen before).

Parsing is separate from the syscalls: :func:`record_from_info` builds a record from a filled
:class:`ProgInfo` and the ``info_len`` the kernel returned, so captured bytes are testable
without privileges (:func:`prog_info_from_bytes`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
import time
from contextlib import suppress
from errno import ENOENT
from typing import Any

from otel_bpf.kernel._uapi import BPF_OBJ_NAME_LEN, Cmd, GetIdAttr, InfoByFdAttr, ProgInfo
from otel_bpf.kernel.btf import BtfFormatError, program_btf_name
from otel_bpf.kernel.decorate import Decorator
from otel_bpf.kernel.errors import BpfError, BpfPermissionError, BpfUnsupportedError
from otel_bpf.kernel.fdinfo import memlock_of_fd
from otel_bpf.kernel.prog_types import PROG_TYPE_NAMES
from otel_bpf.kernel.record_builder import program_record
from otel_bpf.kernel.source import (
    PER_CPU_NEEDS_ITERATOR,
    ReadResult,
    SamplingPath,
    SourceOptions,
)
from otel_bpf.kernel.syscall import bpf, command_error, prepared, raw_bpf
from otel_bpf.kernel.system import boot_time_offset
from otel_bpf.records import ProgramRecord

LIST_PERMISSION_MESSAGE = (
    "permission denied listing BPF programs (BPF_PROG_GET_NEXT_ID): needs CAP_SYS_ADMIN "
    "(CAP_BPF lets a process load programs but not list everyone's); run as root, or grant "
    "CAP_SYS_ADMIN and CAP_BPF with setcap or systemd AmbientCapabilities"
)

_INFO_SIZE = ctypes.sizeof(ProgInfo)
# The verifier lets a program use at most MAX_USED_MAPS (64) maps; a larger count from a
# future kernel is still read, with a second info call.
_MAP_IDS_CAPACITY = 64

_OFF_RECURSION_MISSES = ProgInfo.recursion_misses.offset + ProgInfo.recursion_misses.size
_OFF_VERIFIED_INSNS = ProgInfo.verified_insns.offset + ProgInfo.verified_insns.size
_OFF_RUN_CNT = ProgInfo.run_cnt.offset + ProgInfo.run_cnt.size


def _struct_layout(cls: type[ctypes.Structure]) -> tuple[struct.Struct, dict[str, int]]:
    """A ``struct`` format equal to a ctypes layout, and each field's index in the tuple.

    One ``unpack_from`` turns the whole info buffer into Python values, which is several
    times cheaper than reading the ctypes fields one by one.
    """
    codes: dict[Any, str] = {
        ctypes.c_uint8: "B",
        ctypes.c_uint16: "H",
        ctypes.c_uint32: "I",
        ctypes.c_int32: "i",
        ctypes.c_uint64: "Q",
        ctypes.c_int64: "q",
    }
    fmt, pos, index = "<", 0, {}
    for i, (name, ctype, *_bits) in enumerate(cls._fields_):
        desc = getattr(cls, name)
        fmt += "x" * (desc.offset - pos)
        code = codes.get(ctype)
        fmt += code if code is not None else f"{desc.size}s"  # arrays: tag, name
        pos = desc.offset + desc.size
        index[name] = i
    fmt += "x" * (ctypes.sizeof(cls) - pos)
    return struct.Struct(fmt), index


_LAYOUT, _IX = _struct_layout(ProgInfo)
_TYPE, _ID, _TAG, _JITED, _XLATED = (
    _IX[k] for k in ("type", "id", "tag", "jited_prog_len", "xlated_prog_len")
)
_LOAD_TIME, _UID, _NR_MAP_IDS, _NAME, _BTF_ID = (
    _IX[k] for k in ("load_time", "created_by_uid", "nr_map_ids", "name", "btf_id")
)
_FUNC_INFO_REC_SIZE, _NR_FUNC_INFO = _IX["func_info_rec_size"], _IX["nr_func_info"]
_RUN_TIME_NS, _RUN_CNT = _IX["run_time_ns"], _IX["run_cnt"]
_RECURSION_MISSES, _VERIFIED_INSNS = _IX["recursion_misses"], _IX["verified_insns"]
_CUT_NAME_LEN = BPF_OBJ_NAME_LEN - 1
# InfoByFdAttr's first two fields, bpf_fd and info_len.
_FD_AND_LEN = struct.Struct("<II")
assert InfoByFdAttr.bpf_fd.offset == 0 and InfoByFdAttr.info_len.offset == 4


def prog_info_from_bytes(data: bytes) -> tuple[ProgInfo, int]:
    """A :class:`ProgInfo` from captured bytes, and the ``info_len`` they stand for.

    Input shorter than the struct is what an older kernel returns: the rest stays zero and
    ``info_len`` is the input length, so :func:`record_from_info` reports those fields as None.
    """
    info = ProgInfo()
    size = min(len(data), _INFO_SIZE)
    ctypes.memmove(ctypes.addressof(info), data, size)
    return info, size


def _short_name(raw: bytes) -> bytes:
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def kernel_name(info: ProgInfo) -> str:
    """The name as the kernel keeps it (at most 15 characters)."""
    return bytes(info.name).decode(errors="replace")


def record_from_info(
    info: ProgInfo,
    info_len: int,
    *,
    boot_offset: float,
    map_ids: tuple[int, ...] = (),
    name: str | None = None,
    memlock: int | None = None,
) -> ProgramRecord:
    """Build a record from a filled info struct; fields past ``info_len`` become None (or 0).

    ``name`` overrides the kernel's (the BTF full name); ``boot_offset`` is
    :func:`otel_bpf.kernel.system.boot_time_offset` taken once per pass.
    """
    v = _LAYOUT.unpack_from(info)
    if name is None:
        name = _short_name(v[_NAME]).decode(errors="replace")
    return _record(v, info_len, boot_offset, map_ids, name, memlock)


def _record(
    v: tuple[Any, ...],
    info_len: int,
    boot_offset: float,
    map_ids: tuple[int, ...],
    name: str,
    memlock: int | None,
) -> ProgramRecord:
    stats = info_len >= _OFF_RUN_CNT  # run_time_ns/run_cnt arrived together in 5.1
    type_id = v[_TYPE]
    return program_record(
        v[_ID],
        PROG_TYPE_NAMES[type_id] if type_id < len(PROG_TYPE_NAMES) else f"type_{type_id}",
        type_id,
        name,
        v[_TAG].hex(),
        v[_RUN_TIME_NS] if stats else 0,
        v[_RUN_CNT] if stats else 0,
        v[_RECURSION_MISSES] if info_len >= _OFF_RECURSION_MISSES else None,
        boot_offset + v[_LOAD_TIME] / 1e9,
        v[_UID],
        v[_VERIFIED_INSNS] if info_len >= _OFF_VERIFIED_INSNS else None,
        v[_XLATED],
        v[_JITED],
        map_ids,
        v[_BTF_ID],
        memlock,
    )


_NOT_READ = -1


def _refuse_per_cpu(options: SourceOptions) -> None:
    # BPF_OBJ_GET_INFO_BY_FD sums the per-CPU counters in the kernel (bpf_prog_get_stats()).
    if options.per_cpu:
        raise BpfUnsupportedError(errno.EOPNOTSUPP, PER_CPU_NEEDS_ITERATOR)


class SyscallSource:
    """The syscall path: a :class:`~otel_bpf.kernel.source.ProgramSource` that asks the kernel
    about each program in turn, keeping its buffers and static facts between passes.

    The full name (BTF) and memlock of a program never change after load, so each is read
    once per program, keyed by (id, load_time): ids are not reused until they wrap around,
    and load_time tells a reused id apart. Passes through one source run one at a time.
    It holds no fd between passes, so :meth:`close` has nothing to release.
    """

    path: SamplingPath = "syscall"

    def __init__(
        self, options: SourceOptions | None = None, *, decorator: Decorator | None = None
    ) -> None:
        self._options = options or SourceOptions()
        _refuse_per_cpu(self._options)
        self._decorator = decorator or Decorator()
        self._lock = threading.Lock()
        self._info = ProgInfo()
        self._map_ids = (ctypes.c_uint32 * _MAP_IDS_CAPACITY)()
        self._info_attr = InfoByFdAttr(info_len=_INFO_SIZE, info=ctypes.addressof(self._info))
        self._id_attr = GetIdAttr()
        # (id, load_time) -> (name, memlock or None, or _NOT_READ when never asked)
        self._static: dict[tuple[int, int], tuple[str, int | None]] = {}
        # (id, load_time) -> (the unpacked info of the last pass, the record built from it)
        self._last: dict[tuple[int, int], tuple[tuple[Any, ...], ProgramRecord]] = {}

    @property
    def options(self) -> SourceOptions:
        """What :meth:`read` reads when not told otherwise."""
        return self._options

    def read(self, options: SourceOptions | None = None) -> ReadResult:
        """One pass: every program's record, sorted by id, plus per-program errors."""
        options = options or self._options
        _refuse_per_cpu(options)
        with self._lock:
            started = time.monotonic()
            records, errors = self._pass(options.memlock)
            read_at = (started + time.monotonic()) / 2
        return ReadResult(self._decorator.decorate(records, errors, options), errors, read_at)

    def close(self) -> None:
        """Release what the attachment look-ups hold; every fd of a pass is closed within it."""
        self._decorator.close()

    def __enter__(self) -> SyscallSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pass(self, memlock: bool) -> tuple[list[ProgramRecord], list[str]]:
        # The hot loop: three syscalls per program through the raw ctypes function with
        # prebuilt attrs, one buffer copy and one unpack; the typed-error path only on failure.
        records: list[ProgramRecord] = []
        errors: list[str] = []
        old_static, static = self._static, {}
        old_last, last = self._last, {}
        raw = raw_bpf
        unpack_from, close_fd = _LAYOUT.unpack_from, os.close
        info, map_buf = self._info, self._map_ids
        template = ProgInfo(nr_map_ids=_MAP_IDS_CAPACITY, map_ids=ctypes.addressof(map_buf))
        info_template = bytes(template)
        info_bytes = memoryview(info).cast("B")
        info_attr_bytes = memoryview(self._info_attr).cast("B")
        pack_fd_len = _FD_AND_LEN.pack_into
        id_attr, info_attr = self._id_attr, self._info_attr
        next_args = prepared(Cmd.PROG_GET_NEXT_ID, id_attr)
        fd_args = prepared(Cmd.PROG_GET_FD_BY_ID, id_attr)
        info_args = prepared(Cmd.OBJ_GET_INFO_BY_FD, info_attr)
        boot_offset = boot_time_offset()
        id_attr.start_id = id_attr.next_id = id_attr.open_flags = 0
        while True:
            if (ret := raw(next_args)) < 0:
                err = -ret
                if err == ENOENT:
                    break  # no program after start_id: the pass is complete
                if err in (errno.EPERM, errno.EACCES):
                    raise BpfPermissionError(err, LIST_PERMISSION_MESSAGE)
                raise command_error(err, Cmd.PROG_GET_NEXT_ID)
            # GET_FD_BY_ID checks that everything after prog_id is zero.
            prog_id = id_attr.start_id = id_attr.next_id
            id_attr.next_id = 0
            if (fd := raw(fd_args)) < 0:
                if fd != -ENOENT:  # ENOENT: unloaded since GET_NEXT_ID, nothing to report
                    failure = command_error(-fd, Cmd.PROG_GET_FD_BY_ID)
                    errors.append(f"program {prog_id}: {failure}")
                continue
            try:
                # Everything zero but the map ids buffer (a stale nr_* count with a NULL
                # pointer would make the kernel write through NULL: EFAULT), by one copy of
                # a template, and the attr's fd and size by one pack: each ctypes call or
                # field store costs more than these whole lines.
                info_bytes[:] = info_template
                pack_fd_len(info_attr_bytes, 0, fd, _INFO_SIZE)
                if (ret := raw(info_args)) < 0:
                    failure = command_error(-ret, Cmd.OBJ_GET_INFO_BY_FD)
                    errors.append(f"program {prog_id}: {failure}")
                    continue
                v = unpack_from(info)
                count = v[_NR_MAP_IDS]
                if not count:
                    map_ids: tuple[int, ...] = ()
                elif count <= _MAP_IDS_CAPACITY:
                    map_ids = tuple(map_buf[:count])
                else:
                    map_ids = _all_map_ids(fd, count)
                key = (prog_id, v[_LOAD_TIME])
                known = old_static.get(key)
                if known is None or (memlock and known[1] == _NOT_READ):
                    known = self._static_facts(fd, v, memlock, known)
                static[key] = known
                mem = known[1] if memlock else None
                # Unchanged info (an idle program): the previous record, as it was.
                prior = old_last.get(key)
                if (
                    prior is not None
                    and prior[0] == v
                    and prior[1].map_ids == map_ids
                    and prior[1].memlock_bytes == mem
                ):
                    record = prior[1]
                else:
                    record = _record(v, info_attr.info_len, boot_offset, map_ids, known[0], mem)
                last[key] = (v, record)
                records.append(record)
            except (BpfError, OSError) as err:
                errors.append(f"program {prog_id}: {err}")
            finally:
                close_fd(fd)
        self._static = static  # programs that are gone are forgotten
        self._last = last
        return records, errors

    def _static_facts(
        self,
        fd: int,
        v: tuple[Any, ...],
        memlock: bool,
        known: tuple[str, int | None] | None,
    ) -> tuple[str, int | None]:
        """Name (BTF-resolved when cut) and memlock of a program seen for the first time."""
        name = known[0] if known is not None else _full_name(fd, v)
        return name, (memlock_of_fd(fd) if memlock else _NOT_READ)


def _full_name(fd: int, v: tuple[Any, ...]) -> str:
    """The program's name from BTF func_info when the kernel cut it, else the kernel's."""
    short = _short_name(v[_NAME])
    name = short.decode(errors="replace")
    if len(short) == _CUT_NAME_LEN and v[_BTF_ID] and v[_NR_FUNC_INFO]:
        # On any failure bpftool falls back to the kernel's name, and so do we.
        with suppress(BpfError, BtfFormatError):
            name = program_btf_name(fd, v[_BTF_ID], v[_FUNC_INFO_REC_SIZE]) or name
    return name


def read_one(
    prog_id: int, *, memlock: bool = True, boot_offset: float | None = None
) -> ProgramRecord:
    """One program's record, the same as a :func:`read_all` pass makes it.

    GET_FD_BY_ID, OBJ_GET_INFO_BY_FD (again for the map ids past the first 64), the full
    name from BTF when the kernel cut it, and ``memlock`` from fdinfo unless ``memlock`` is
    false.  ``boot_offset`` (:func:`otel_bpf.kernel.system.boot_time_offset`) lets a caller
    reading many programs take it once.  Raises
    :class:`~otel_bpf.kernel.errors.BpfNotFoundError` when no program has that id (any more).
    """
    fd = bpf(Cmd.PROG_GET_FD_BY_ID, GetIdAttr(start_id=prog_id), f"program {prog_id}")
    try:
        map_buf = (ctypes.c_uint32 * _MAP_IDS_CAPACITY)()
        info = ProgInfo(nr_map_ids=_MAP_IDS_CAPACITY, map_ids=ctypes.addressof(map_buf))
        attr = InfoByFdAttr(bpf_fd=fd, info_len=_INFO_SIZE, info=ctypes.addressof(info))
        bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, f"program {prog_id}")
        v = _LAYOUT.unpack_from(info)
        count = v[_NR_MAP_IDS]
        map_ids = tuple(map_buf[:count]) if count <= _MAP_IDS_CAPACITY else _all_map_ids(fd, count)
        return _record(
            v,
            attr.info_len,
            boot_time_offset() if boot_offset is None else boot_offset,
            map_ids,
            _full_name(fd, v),
            memlock_of_fd(fd) if memlock else None,
        )
    finally:
        os.close(fd)


def _all_map_ids(fd: int, count: int) -> tuple[int, ...]:
    """The map ids of a program using more maps than the shared buffer holds."""
    ids = (ctypes.c_uint32 * count)()
    info = ProgInfo()
    info.nr_map_ids = count
    info.map_ids = ctypes.addressof(ids)
    attr = InfoByFdAttr(bpf_fd=fd, info_len=_INFO_SIZE, info=ctypes.addressof(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "map ids")
    return tuple(ids[: min(count, info.nr_map_ids)])


def read_all(options: SourceOptions | None = None) -> ReadResult:
    """One pass over every program on the host through a fresh :class:`SyscallSource`.

    Raises :class:`~otel_bpf.kernel.errors.BpfPermissionError` without CAP_SYS_ADMIN.
    """
    return SyscallSource(options).read()


def read_programs(options: SourceOptions | None = None) -> list[ProgramRecord]:
    """Every BPF program on the host as immutable records, sorted by id.

    A program that cannot be read is left out; :func:`read_all` also returns why.
    ``options`` adds owners and maps, or leaves memlock out (see
    :class:`~otel_bpf.kernel.source.SourceOptions`).
    """
    return read_all(options).records
