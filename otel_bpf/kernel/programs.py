"""One pass over every BPF program on the host: ``bpf_prog_info`` turned into records.

Enumeration is GET_NEXT_ID -> GET_FD_BY_ID -> OBJ_GET_INFO_BY_FD -> close for each program.
Programs come and go during a pass: one that vanished (ENOENT) is skipped silently, one that
fails for another reason is reported in :attr:`ReadResult.errors`, and the pass goes on.

The per-program work is kept small because it runs for every program every tick: one
reusable info buffer and attr, no dict per program, the BTF name lookup cached per program
(it costs three extra syscalls and a parse).

Parsing is separate from the syscalls: :func:`record_from_info` builds a record from a filled
:class:`ProgInfo` and the ``info_len`` the kernel returned, so captured bytes are testable
without privileges (:func:`prog_info_from_bytes`).
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field, replace

from otel_bpf.kernel._uapi import BPF_OBJ_NAME_LEN, Cmd, GetIdAttr, InfoByFdAttr, ProgInfo
from otel_bpf.kernel.btf import BtfFormatError, program_btf_name
from otel_bpf.kernel.errors import BpfError, BpfNotFoundError, BpfPermissionError
from otel_bpf.kernel.fdinfo import memlock_of_fd
from otel_bpf.kernel.prog_types import prog_type_name
from otel_bpf.kernel.syscall import bpf, close
from otel_bpf.kernel.system import boot_time_offset
from otel_bpf.records import ProgramRecord

LIST_PERMISSION_MESSAGE = (
    "permission denied listing BPF programs (BPF_PROG_GET_NEXT_ID): needs CAP_SYS_ADMIN "
    "(CAP_BPF lets a process load programs but not list everyone's); run as root, or grant "
    "CAP_SYS_ADMIN and CAP_BPF with setcap or systemd AmbientCapabilities"
)

_INFO_SIZE = ctypes.sizeof(ProgInfo)
_MAP_IDS_CAPACITY = 64

_OFF_RECURSION_MISSES = ProgInfo.recursion_misses.offset + ProgInfo.recursion_misses.size
_OFF_VERIFIED_INSNS = ProgInfo.verified_insns.offset + ProgInfo.verified_insns.size
_OFF_RUN_CNT = ProgInfo.run_cnt.offset + ProgInfo.run_cnt.size


@dataclass(frozen=True)
class ReadResult:
    """The programs of one pass, sorted by id, and what went wrong on the way."""

    records: list[ProgramRecord]
    errors: list[str] = field(default_factory=list)


def prog_info_from_bytes(data: bytes) -> tuple[ProgInfo, int]:
    """A :class:`ProgInfo` from captured bytes, and the ``info_len`` they stand for.

    Input shorter than the struct is what an older kernel returns: the rest stays zero and
    ``info_len`` is the input length, so :func:`record_from_info` reports those fields as None.
    """
    info = ProgInfo()
    size = min(len(data), _INFO_SIZE)
    ctypes.memmove(ctypes.addressof(info), data, size)
    return info, size


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
    stats = info_len >= _OFF_RUN_CNT  # run_time_ns/run_cnt arrived together in 5.1
    return ProgramRecord(
        id=info.id,
        type=prog_type_name(info.type),
        type_id=info.type,
        name=kernel_name(info) if name is None else name,
        tag=bytes(info.tag).hex(),
        run_time_ns=info.run_time_ns if stats else 0,
        run_cnt=info.run_cnt if stats else 0,
        recursion_misses=info.recursion_misses if info_len >= _OFF_RECURSION_MISSES else None,
        load_time=boot_offset + info.load_time / 1e9,
        uid=info.created_by_uid,
        verified_insns=info.verified_insns if info_len >= _OFF_VERIFIED_INSNS else None,
        xlated_size=info.xlated_prog_len,
        jited_size=info.jited_prog_len,
        map_ids=map_ids,
        btf_id=info.btf_id,
        memlock_bytes=memlock,
    )


class ProgramReader:
    """Reads every program; keeps its buffers and the BTF name cache between passes.

    Thread-safe: passes through one reader run one at a time.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._info = ProgInfo()
        self._info_ptr = ctypes.addressof(self._info)
        self._map_ids = (ctypes.c_uint32 * _MAP_IDS_CAPACITY)()
        self._info_attr = InfoByFdAttr()
        self._id_attr = GetIdAttr()
        # (prog id, load_time ns) -> full name; a reloaded program gets a new id anyway,
        # load_time guards against id reuse after wrap-around.
        self._names: dict[tuple[int, int], str] = {}

    def read_all(
        self, *, owners: bool = False, maps: bool = False, memlock: bool = True
    ) -> ReadResult:
        """One pass: every program's record, sorted by id, plus per-program errors."""
        with self._lock:
            records, errors = self._pass(memlock)
        if maps:
            from otel_bpf.kernel.maps import read_maps

            found, map_errors = read_maps(i for r in records for i in r.map_ids)
            errors.extend(map_errors)
            records = [
                replace(r, maps=tuple(found[i] for i in r.map_ids if i in found)) for r in records
            ]
        if owners:
            from otel_bpf.kernel.owners import scan_owners

            by_prog = scan_owners()
            records = [replace(r, owners=by_prog.get(r.id, ())) for r in records]
        return ReadResult(records, errors)

    def _pass(self, memlock: bool) -> tuple[list[ProgramRecord], list[str]]:
        records: list[ProgramRecord] = []
        errors: list[str] = []
        seen_names: dict[tuple[int, int], str] = {}
        id_attr = self._id_attr
        boot_offset = boot_time_offset()
        prog_id = 0
        while True:
            id_attr.start_id = prog_id
            id_attr.next_id = 0
            id_attr.open_flags = 0
            try:
                bpf(Cmd.PROG_GET_NEXT_ID, id_attr)
            except BpfNotFoundError:
                break  # no program after prog_id: the pass is complete
            except BpfPermissionError as err:
                raise BpfPermissionError(err.errno, LIST_PERMISSION_MESSAGE) from None
            prog_id = id_attr.next_id
            try:
                record = self._read_one(prog_id, boot_offset, memlock, seen_names)
            except BpfNotFoundError:
                continue  # unloaded between GET_NEXT_ID and GET_FD_BY_ID
            except (BpfError, OSError) as err:
                errors.append(f"program {prog_id}: {err}")
                continue
            records.append(record)
        self._names = seen_names  # forget programs that are gone
        return records, errors

    def _read_one(
        self, prog_id: int, boot_offset: float, memlock: bool, names: dict[tuple[int, int], str]
    ) -> ProgramRecord:
        id_attr = self._id_attr
        id_attr.start_id = prog_id
        id_attr.next_id = 0
        fd = bpf(Cmd.PROG_GET_FD_BY_ID, id_attr)
        try:
            info = self._info
            ctypes.memset(self._info_ptr, 0, _INFO_SIZE)
            info.nr_map_ids = _MAP_IDS_CAPACITY
            info.map_ids = ctypes.addressof(self._map_ids)
            attr = self._info_attr
            attr.bpf_fd = fd
            attr.info_len = _INFO_SIZE
            attr.info = self._info_ptr
            bpf(Cmd.OBJ_GET_INFO_BY_FD, attr)
            info_len = attr.info_len
            count = info.nr_map_ids
            if count <= _MAP_IDS_CAPACITY:
                map_ids = tuple(self._map_ids[:count])
            else:
                map_ids = _all_map_ids(fd, count)
            raw_name = info.name
            name: str | None = None
            if len(raw_name) == BPF_OBJ_NAME_LEN - 1 and info.btf_id and info.nr_func_info:
                name = self._full_name(fd, info, names)
            return record_from_info(
                info,
                info_len,
                boot_offset=boot_offset,
                map_ids=map_ids,
                name=name,
                memlock=memlock_of_fd(fd) if memlock else None,
            )
        finally:
            close(fd)

    def _full_name(self, fd: int, info: ProgInfo, names: dict[tuple[int, int], str]) -> str:
        key = (info.id, info.load_time)
        name = self._names.get(key)
        if name is None:
            short = kernel_name(info)
            btf_id, rec_size = info.btf_id, info.func_info_rec_size
            try:
                name = program_btf_name(fd, btf_id, rec_size) or short
            except (BpfError, BtfFormatError):
                # bpftool falls back to the kernel name too; not worth an error line.
                name = short
        names[key] = name
        return name


def _all_map_ids(fd: int, count: int) -> tuple[int, ...]:
    """The map ids of a program using more maps than the shared buffer holds."""
    ids = (ctypes.c_uint32 * count)()
    info = ProgInfo()
    info.nr_map_ids = count
    info.map_ids = ctypes.addressof(ids)
    attr = InfoByFdAttr(bpf_fd=fd, info_len=_INFO_SIZE, info=ctypes.addressof(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "map ids")
    return tuple(ids[: min(count, info.nr_map_ids)])


_default_reader = ProgramReader()


def read_all(*, owners: bool = False, maps: bool = False, memlock: bool = True) -> ReadResult:
    """One pass over every program on the host.

    ``owners`` adds the processes holding each program (a procfs scan), ``maps`` the maps
    each program uses, ``memlock`` (default on) the locked memory from fdinfo.
    Raises :class:`~otel_bpf.kernel.errors.BpfPermissionError` without CAP_SYS_ADMIN.
    """
    return _default_reader.read_all(owners=owners, maps=maps, memlock=memlock)


def read_programs(
    *, owners: bool = False, maps: bool = False, memlock: bool = True
) -> list[ProgramRecord]:
    """Every BPF program on the host as immutable records, sorted by id.

    A program that cannot be read is left out; :func:`read_all` also returns why.
    """
    return read_all(owners=owners, maps=maps, memlock=memlock).records
