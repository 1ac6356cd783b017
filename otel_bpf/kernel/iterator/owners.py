"""The ``iter/task_file`` program: which processes hold each program, without scanning /proc.

bpftool and bpftop recognise program files by comparing ``file->f_op`` with the address of
``bpf_prog_fops``, taken as a ksym.  That is a data symbol, absent from kallsyms without
``CONFIG_KALLSYMS_ALL``, so their way fails on such kernels.  This program learns the two
addresses instead: we hold a program fd and a link fd (its own), and when the walk meets
those fds in our own process (task tgid == the reader's tgid) it stores their ``f_op``.  One
calibration pass is made at load; afterwards every file whose ``f_op`` equals one of them is
reported.  The kernel's walk visits each thread group's file table once (threads sharing it
are skipped), like the /proc scan.

One 32-byte record per program or link fd: ``u32 prog_id, u32 tgid, u32 fd, u32 via
(0 link, 1 program), char comm[16]`` (the thread-group leader's comm, as /proc shows it).
A link whose program is gone reports ``prog_id`` 0 and is dropped.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import Cmd, ProgType, u32, u64
from otel_bpf.kernel.asm import R0, R1, R2, R3, R6, R7, R8, R9, R10, Builder
from otel_bpf.kernel.errors import BpfError
from otel_bpf.kernel.iterator._common import (
    BPF_TRACE_ITER,
    HELPER_GET_CURRENT_PID_TGID,
    HELPER_PROBE_READ_KERNEL,
    HELPER_SEQ_WRITE,
    MAP_TYPE_ARRAY,
    OwnedFds,
    attach_iterator,
    read_iterator,
)
from otel_bpf.kernel.loader import load_program, program_id
from otel_bpf.kernel.maps import create_map
from otel_bpf.kernel.owners import process_executable
from otel_bpf.kernel.syscall import bpf
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf
from otel_bpf.records import Owner

PROGRAM_NAME = "otel_bpf_owners"
RECORD = struct.Struct("<IIII16s")
# Numbered so that sorting by number sorts like the /proc scan, by name.
VIA = ("link", "prog")

# State map value: u32 tgid (of the reader, learned), u32 prog_fd, u32 link_fd, u32 pad,
# u64 prog_fop, u64 link_fop.
_ST_TGID, _ST_PROG_FD, _ST_LINK_FD, _ST_PROG_FOP, _ST_LINK_FOP = 0, 4, 8, 16, 24
_STATE_SIZE = 32

_REC = -32
_SCRATCH = -40


# Every type named below, so that one walk of vmlinux BTF finds them all.
BTF_NAMES = (
    "bpf_iter_task_file",
    "bpf_iter__task_file",
    "bpf_iter_meta",
    "file",
    "task_struct",
    "bpf_link",
    "bpf_prog",
    "bpf_prog_aux",
)


@dataclass(frozen=True, slots=True)
class OwnersLayout:
    """BTF ids and offsets of the ``task_file`` program."""

    attach_btf_id: int  # FUNC bpf_iter_task_file
    ctx_meta: int
    ctx_task: int
    ctx_fd: int
    ctx_file: int
    meta_seq: int
    file_f_op: int
    file_private_data: int
    task_tgid: int
    task_group_leader: int
    task_comm: int
    link_prog: int
    prog_aux: int
    aux_id: int

    @classmethod
    def from_btf(cls, btf: VmlinuxBtf) -> OwnersLayout:
        """Read every id and offset from vmlinux BTF."""
        btf.prefetch(BTF_NAMES)
        off = btf.member_offset
        return cls(
            attach_btf_id=btf.func_id("bpf_iter_task_file"),
            ctx_meta=off("bpf_iter__task_file", "meta"),
            ctx_task=off("bpf_iter__task_file", "task"),
            ctx_fd=off("bpf_iter__task_file", "fd"),
            ctx_file=off("bpf_iter__task_file", "file"),
            meta_seq=off("bpf_iter_meta", "seq"),
            file_f_op=off("file", "f_op"),
            file_private_data=off("file", "private_data"),
            task_tgid=off("task_struct", "tgid"),
            task_group_leader=off("task_struct", "group_leader"),
            task_comm=off("task_struct", "comm"),
            link_prog=off("bpf_link", "prog"),
            prog_aux=off("bpf_prog", "aux"),
            aux_id=off("bpf_prog_aux", "id"),
        )


class _MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", u32), ("_pad", u32), ("key", u64), ("value", u64), ("flags", u64)]


def _read_pointer(b: Builder, offset: int) -> None:
    """R3 += offset; R3 = *(u64 *)R3 read with probe_read_kernel (0 when unreadable)."""
    b.emit(asm.alu64_imm("add", R3, offset))
    b.emit(asm.mov64_reg(R1, R10), asm.alu64_imm("add", R1, _SCRATCH), asm.mov64_imm(R2, 8))
    b.emit(asm.call(HELPER_PROBE_READ_KERNEL))
    b.emit(asm.ldx_mem(8, R3, R10, _SCRATCH))


def build_program(layout: OwnersLayout, state_fd: int) -> list[asm.Insn]:
    """The task_file program using the state map behind ``state_fd``."""
    lay = layout
    b = Builder()
    # R6 = ctx, R7 = file, R8 = task, R9 = &state.
    b.emit(asm.mov64_reg(R6, R1))
    b.emit(asm.ldx_mem(8, R7, R6, lay.ctx_file))
    b.jmp_imm("jeq", R7, 0, "out")
    b.emit(asm.ldx_mem(8, R8, R6, lay.ctx_task))
    b.jmp_imm("jeq", R8, 0, "out")
    b.emit(asm.ld_map_value(R9, state_fd, 0))
    # Calibrated already?  Then skip straight to the comparison.
    b.emit(asm.ldx_mem(8, R1, R9, _ST_LINK_FOP))
    b.jmp_imm("jeq", R1, 0, "calibrate")
    b.emit(asm.ldx_mem(8, R1, R9, _ST_PROG_FOP))
    b.jmp_imm("jne", R1, 0, "match")

    b.label("calibrate")
    b.emit(asm.call(HELPER_GET_CURRENT_PID_TGID), asm.alu64_imm("rsh", R0, 32))
    b.emit(asm.ldx_mem(4, R1, R8, lay.task_tgid))
    b.jmp_reg("jne", R1, R0, "match")
    b.emit(asm.stx_mem(4, R9, R0, _ST_TGID))
    b.emit(asm.ldx_mem(4, R1, R6, lay.ctx_fd))
    b.emit(asm.ldx_mem(4, R2, R9, _ST_PROG_FD))
    b.jmp_reg("jne", R1, R2, "try_link")
    b.emit(asm.ldx_mem(8, R3, R7, lay.file_f_op), asm.stx_mem(8, R9, R3, _ST_PROG_FOP))
    b.label("try_link")
    b.emit(asm.ldx_mem(4, R2, R9, _ST_LINK_FD))
    b.jmp_reg("jne", R1, R2, "match")
    b.emit(asm.ldx_mem(8, R3, R7, lay.file_f_op), asm.stx_mem(8, R9, R3, _ST_LINK_FOP))

    b.label("match")
    b.emit(asm.ldx_mem(8, R1, R7, lay.file_f_op))
    b.emit(asm.ldx_mem(8, R2, R9, _ST_PROG_FOP))
    b.jmp_imm("jeq", R2, 0, "out")
    b.emit(asm.st_mem(4, R10, _REC + 12, 1))  # via: 1 program fd
    b.emit(asm.ldx_mem(8, R3, R7, lay.file_private_data))  # void *: a plain integer
    b.jmp_reg("jeq", R1, R2, "have_prog")
    b.emit(asm.ldx_mem(8, R2, R9, _ST_LINK_FOP))
    b.jmp_imm("jeq", R2, 0, "out")
    b.jmp_reg("jne", R1, R2, "out")
    b.emit(asm.st_mem(4, R10, _REC + 12, 0))  # via: 0 link fd
    _read_pointer(b, lay.link_prog)  # link->prog
    b.jmp_imm("jeq", R3, 0, "out")

    b.label("have_prog")
    _read_pointer(b, lay.prog_aux)  # prog->aux
    b.jmp_imm("jeq", R3, 0, "out")
    b.emit(asm.alu64_imm("add", R3, lay.aux_id))
    b.emit(asm.mov64_reg(R1, R10), asm.alu64_imm("add", R1, _REC), asm.mov64_imm(R2, 4))
    b.emit(asm.call(HELPER_PROBE_READ_KERNEL))
    b.jmp_imm("jne", R0, 0, "out")
    b.emit(asm.ldx_mem(4, R1, R8, lay.task_tgid), asm.stx_mem(4, R10, R1, _REC + 4))
    b.emit(asm.ldx_mem(4, R1, R6, lay.ctx_fd), asm.stx_mem(4, R10, R1, _REC + 8))
    b.emit(asm.ldx_mem(8, R2, R8, lay.task_group_leader))
    b.emit(asm.ldx_mem(8, R1, R2, lay.task_comm), asm.stx_mem(8, R10, R1, _REC + 16))
    b.emit(asm.ldx_mem(8, R1, R2, lay.task_comm + 8), asm.stx_mem(8, R10, R1, _REC + 24))
    b.emit(asm.ldx_mem(8, R1, R6, lay.ctx_meta), asm.ldx_mem(8, R1, R1, lay.meta_seq))
    b.emit(asm.mov64_reg(R2, R10), asm.alu64_imm("add", R2, _REC))
    b.emit(asm.mov64_imm(R3, RECORD.size), asm.call(HELPER_SEQ_WRITE))
    b.label("out")
    b.emit(asm.mov64_imm(R0, 0), asm.exit_())
    return b.insns()


@dataclass(frozen=True, slots=True)
class OwnerFd:
    """One program or link fd seen by the iterator."""

    prog_id: int
    pid: int
    fd: int
    via: str
    comm: str


def decode(data: bytes) -> list[OwnerFd]:
    """Records of one pass; links without a program are dropped."""
    usable = len(data) - len(data) % RECORD.size
    return [
        OwnerFd(pid_, tgid, fd, VIA[via & 1], comm.split(b"\0", 1)[0].decode(errors="replace"))
        for pid_, tgid, fd, via, comm in RECORD.iter_unpack(data[:usable])
        if pid_
    ]


class OwnersIterator(OwnedFds):
    """The loaded, calibrated ``iter/task_file`` program.  Close it (or use ``with``).

    Raises :class:`BpfError` when loading or calibration fails (for instance in a pid
    namespace whose pids differ from the kernel's global tgids): the caller then scans /proc.
    """

    def __init__(self, layout: OwnersLayout) -> None:
        self.layout = layout
        super().__init__()
        self._owner_cache: dict[tuple[int, int, bytes], Owner] = {}
        try:
            self._state_fd = self._keep(
                create_map(MAP_TYPE_ARRAY, 4, _STATE_SIZE, 1, "otel_bpf_own")
            )
            insns = build_program(layout, self._state_fd)
            self.insn_count = len(insns)
            self.prog_fd = self._keep(
                load_program(
                    ProgType.TRACING,
                    asm.assemble(insns),
                    PROGRAM_NAME,
                    license="GPL",
                    expected_attach_type=BPF_TRACE_ITER,
                    attach_btf_id=layout.attach_btf_id,
                )
            )
            self.prog_id = program_id(self.prog_fd)
            self.link_fd = self._keep(attach_iterator(self.prog_fd))
            self._calibrate()
        except BaseException:
            self.close()
            raise

    def _calibrate(self) -> None:
        value = struct.pack("<IIIIQQ", 0, self.prog_fd, self.link_fd, 0, 0, 0)
        self._update_state(value)
        read_iterator(self.link_fd)  # learns f_op; files seen before ours are not reported
        state = self._lookup_state()
        _, _, _, _, prog_fop, link_fop = struct.unpack("<IIIIQQ", state)
        if not prog_fop or not link_fop:
            raise BpfError(
                errno.ESRCH,
                "iter/task_file calibration did not see this process's own BPF fds",
            )
        own = {(o.prog_id, o.pid) for o in self.read()}
        if (self.prog_id, os.getpid()) not in own:
            raise BpfError(
                errno.ESRCH,
                "iter/task_file reports this process under another pid (a pid namespace?)",
            )

    def _update_state(self, value: bytes) -> None:
        key = ctypes.c_uint32(0)
        buf = ctypes.create_string_buffer(value, _STATE_SIZE)
        attr = _MapElemAttr(self._state_fd, 0, ctypes.addressof(key), ctypes.addressof(buf), 0)
        bpf(Cmd.MAP_UPDATE_ELEM, attr, "owners state")

    def _lookup_state(self) -> bytes:
        key = ctypes.c_uint32(0)
        buf = ctypes.create_string_buffer(_STATE_SIZE)
        attr = _MapElemAttr(self._state_fd, 0, ctypes.addressof(key), ctypes.addressof(buf), 0)
        bpf(Cmd.MAP_LOOKUP_ELEM, attr, "owners state")
        return buf.raw

    def read(self) -> list[OwnerFd]:
        """One pass: every program or link fd held by any process."""
        return decode(read_iterator(self.link_fd))

    def owners(self) -> dict[int, tuple[Owner, ...]]:
        """Program id -> holders, sorted by (pid, via), one entry per way held: the same shape
        as the /proc scan (``otel_bpf.kernel.owners.scan_owners``)."""
        owners, self._owner_cache = owners_from_records(
            read_iterator(self.link_fd), self._owner_cache
        )
        return owners


_Key = tuple[int, int, bytes]
"""(tgid, via, comm) of one holder."""


def owners_from_records(
    data: bytes, cache: dict[tuple[int, int, bytes], Owner] | None = None
) -> tuple[dict[int, tuple[Owner, ...]], dict[tuple[int, int, bytes], Owner]]:
    """Group one pass's records by program.

    Runs every pass, so it works on the unpacked tuples and reuses the :class:`Owner` of a
    (pid, via, comm) seen in the previous pass (``cache``; the executable is read once per
    new owner).  Returns the grouping and the cache for the next pass.
    """
    old = cache or {}
    new: dict[tuple[int, int, bytes], Owner] = {}
    # Most programs have one holder: its key alone, a set only from a second distinct one.
    found: dict[int, _Key | set[_Key]] = {}
    usable = len(data) - len(data) % RECORD.size
    for prog_id, tgid, _fd, via, comm in RECORD.iter_unpack(data[:usable]):
        if prog_id:
            key = (tgid, via & 1, comm)
            held = found.get(prog_id)
            if held is None:
                found[prog_id] = key
            elif isinstance(held, set):
                held.add(key)
            elif held != key:
                found[prog_id] = {held, key}
    exes: dict[int, str] = {}
    result: dict[int, tuple[Owner, ...]] = {}
    for prog_id, held in found.items():
        owners = []
        for key in sorted(held) if isinstance(held, set) else (held,):
            owner = new.get(key) or old.get(key)
            if owner is None:
                pid, via, comm = key
                if pid not in exes:
                    exes[pid] = process_executable(pid)
                name = comm.split(b"\0", 1)[0].decode(errors="replace")
                owner = Owner(pid=pid, comm=name, executable=exes[pid], via=VIA[via])
            new[key] = owner
            owners.append(owner)
        result[prog_id] = tuple(owners)
    return result, new
