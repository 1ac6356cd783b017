"""The ``iter/task_file`` program: which processes hold each program, without scanning /proc.

bpftool and bpftop recognise program files by comparing ``file->f_op`` with the address of
``bpf_prog_fops``, taken as a ksym.  That is a data symbol, absent from kallsyms without
``CONFIG_KALLSYMS_ALL``, so their way fails on such kernels.  This program learns the two
addresses instead: we hold a program fd and a link fd (its own), and when the walk meets
those fds in our own process (task tgid == the reader's tgid) it stores their ``f_op``.  One
calibration pass is made at load; afterwards every file whose ``f_op`` equals one of them is
reported.  The kernel's walk visits each thread group's file table once (threads sharing it
are skipped), like the /proc scan.

The output is a stream of little-endian u32 words, as compact as the walk allows because a
process may hold thousands of programs and every word is decoded in Python each pass:

* a program fd: ``prog_id`` (one word, never 0: ids start at 1),
* a link fd: ``0, KIND_LINK, prog_id`` (a link whose program is gone writes nothing),
* before the first of either in a task: ``0, KIND_TASK, comm[16], tgid`` (the thread-group
  leader's comm, as /proc shows it).

So the holder is written once per task rather than once per fd, and the decoder takes each
task's run of program ids as one slice (:func:`decode`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import threading
from array import array
from dataclasses import dataclass

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import Cmd, Helper, MapElemAttr, MapType, u32, u64
from otel_bpf.kernel.asm import R0, R1, R2, R3, R6, R7, R8, R9, R10, Builder
from otel_bpf.kernel.errors import BpfError
from otel_bpf.kernel.iterator._common import (
    OwnedFds,
    probe_read_to_stack,
    read_iterator,
    seq_write_from_stack,
)
from otel_bpf.kernel.maps import create_owned_map
from otel_bpf.kernel.owners import OwnerKey, TaskFds, group_by_program
from otel_bpf.kernel.syscall import bpf
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf
from otel_bpf.records import Owner

PROGRAM_NAME = "otel_bpf_owners"

# -- The output stream --------------------------------------------------------------------

MARK = 0
"""First word of a task header or a link entry; a program entry is a non-zero id instead."""
KIND_TASK = 1
KIND_LINK = 2
VIA_LINK, VIA_PROG = 0, 1
"""The way a file holds its program, in a register of the program."""


class TaskHeader(ctypes.Structure):
    """``0, KIND_TASK, comm, tgid``: the holder of the entries that follow."""

    _fields_ = [("mark", u32), ("kind", u32), ("comm", ctypes.c_char * 16), ("tgid", u32)]


class LinkEntry(ctypes.Structure):
    """``0, KIND_LINK, prog_id``: a link fd.  A program fd is written as ``prog_id`` alone."""

    _fields_ = [("mark", u32), ("kind", u32), ("prog_id", u32)]


PROG_ENTRY_SIZE = ctypes.sizeof(u32)


# The same records for decoding (the kernel writes host byte order: little-endian hosts).
TASK_HEADER = struct.Struct("<II16sI")
LINK_ENTRY = struct.Struct("<III")
_MARKED = struct.Struct("<II")  # mark, kind: the common start of both
_WORD = 4
assert TASK_HEADER.size == ctypes.sizeof(TaskHeader)
assert LINK_ENTRY.size == ctypes.sizeof(LinkEntry)
assert array("I").itemsize == _WORD  # program ids are decoded as array("I")


class _State(ctypes.Structure):
    """The state map's one value: what calibration learns, and where the program wrote the
    last task header (so that it writes one per task, see :func:`build_program`)."""

    _fields_ = [
        ("reader_tgid", u32),  # learned: the tgid the kernel gives the calibrating process
        ("prog_fd", u32),  # set by the reader: its own program fd ...
        ("link_fd", u32),  # ... and link fd, whose f_op calibration learns
        ("header_tgid", u32),
        ("prog_fop", u64),  # learned: f_op of a BPF program file (&bpf_prog_fops)
        ("link_fop", u64),  # learned: f_op of a BPF link file (&bpf_link_fops)
        ("header_session", u64),  # bpf_iter_meta.session_id of the pass that wrote it
        ("header_seq_num", u64),  # bpf_iter_meta.seq_num of the fd it was written for
    ]


def _round_up_to_8(size: int) -> int:
    return (size + 7) & ~7


# Stack of the program: the two records (8-aligned: comm is copied with 8-byte stores) and
# 8 bytes for probe_read_kernel.
_TASK_AT = -_round_up_to_8(ctypes.sizeof(TaskHeader))
_LINK_AT = _TASK_AT - _round_up_to_8(ctypes.sizeof(LinkEntry))
_PROG_ENTRY_AT = _LINK_AT + LinkEntry.prog_id.offset  # a program fd's entry is this word alone
_SCRATCH = _LINK_AT - 8
assert TaskHeader.comm.offset % 8 == 0


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
    meta_session_id: int
    meta_seq_num: int
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
            meta_session_id=off("bpf_iter_meta", "session_id"),
            meta_seq_num=off("bpf_iter_meta", "seq_num"),
            file_f_op=off("file", "f_op"),
            file_private_data=off("file", "private_data"),
            task_tgid=off("task_struct", "tgid"),
            task_group_leader=off("task_struct", "group_leader"),
            task_comm=off("task_struct", "comm"),
            link_prog=off("bpf_link", "prog"),
            prog_aux=off("bpf_prog", "aux"),
            aux_id=off("bpf_prog_aux", "id"),
        )


def _state(name: str) -> int:
    """Offset of a field of the state map's value."""
    return int(getattr(_State, name).offset)


def _read_pointer(b: Builder, offset: int) -> None:
    """R3 += offset; R3 = *(u64 *)R3 read with probe_read_kernel (0 when unreadable)."""
    b.emit(asm.alu64_imm("add", R3, offset))
    probe_read_to_stack(b, _SCRATCH, 8)
    b.emit(asm.ldx_mem(8, R3, R10, _SCRATCH))


def _seq_write(b: Builder, lay: OwnersLayout, stack_at: int, size: int) -> None:
    """bpf_seq_write(ctx->meta->seq, R10 + stack_at, size)."""
    seq_write_from_stack(b, lay.ctx_meta, lay.meta_seq, stack_at, size)


def build_program(layout: OwnersLayout, state_fd: int) -> list[asm.Insn]:
    """The task_file program using the state map behind ``state_fd``."""
    lay = layout
    b = Builder()
    # R6 = ctx, R7 = file (later the way held: VIA_PROG or VIA_LINK), R8 = task, R9 = &state.
    b.emit(asm.mov64_reg(R6, R1))
    b.emit(asm.ldx_mem(8, R7, R6, lay.ctx_file))
    b.jmp_imm("jeq", R7, 0, "out")
    b.emit(asm.ldx_mem(8, R8, R6, lay.ctx_task))
    b.jmp_imm("jeq", R8, 0, "out")
    b.emit(asm.ld_map_value(R9, state_fd, 0))
    # Calibrated already?  Then skip straight to the comparison.
    b.emit(asm.ldx_mem(8, R1, R9, _state("link_fop")))
    b.jmp_imm("jeq", R1, 0, "calibrate")
    b.emit(asm.ldx_mem(8, R1, R9, _state("prog_fop")))
    b.jmp_imm("jne", R1, 0, "match")

    b.label("calibrate")
    b.emit(asm.call(Helper.GET_CURRENT_PID_TGID), asm.alu64_imm("rsh", R0, 32))
    b.emit(asm.ldx_mem(4, R1, R8, lay.task_tgid))
    b.jmp_reg("jne", R1, R0, "match")
    b.emit(asm.stx_mem(4, R9, R0, _state("reader_tgid")))
    b.emit(asm.ldx_mem(4, R1, R6, lay.ctx_fd))
    b.emit(asm.ldx_mem(4, R2, R9, _state("prog_fd")))
    b.jmp_reg("jne", R1, R2, "try_link")
    b.emit(asm.ldx_mem(8, R3, R7, lay.file_f_op), asm.stx_mem(8, R9, R3, _state("prog_fop")))
    b.label("try_link")
    b.emit(asm.ldx_mem(4, R2, R9, _state("link_fd")))
    b.jmp_reg("jne", R1, R2, "match")
    b.emit(asm.ldx_mem(8, R3, R7, lay.file_f_op), asm.stx_mem(8, R9, R3, _state("link_fop")))

    # Only program and link files go further: most files end here.
    b.label("match")
    b.emit(asm.ldx_mem(8, R1, R7, lay.file_f_op))
    b.emit(asm.ldx_mem(8, R2, R9, _state("prog_fop")))
    b.jmp_imm("jeq", R2, 0, "out")
    b.emit(asm.ldx_mem(8, R3, R7, lay.file_private_data))  # void *: a plain integer
    b.emit(asm.mov64_imm(R7, VIA_PROG))
    b.jmp_reg("jeq", R1, R2, "have_prog")
    b.emit(asm.ldx_mem(8, R2, R9, _state("link_fop")))
    b.jmp_imm("jeq", R2, 0, "out")
    b.jmp_reg("jne", R1, R2, "out")
    b.emit(asm.mov64_imm(R7, VIA_LINK))
    _read_pointer(b, lay.link_prog)  # link->prog
    b.jmp_imm("jeq", R3, 0, "out")

    # prog->aux->id into the entry.  (With thousands of programs these two dependent loads
    # mostly miss the caches and the TLB: most of what a program fd costs beyond the walk.)
    b.label("have_prog")
    _read_pointer(b, lay.prog_aux)
    b.jmp_imm("jeq", R3, 0, "out")
    b.emit(asm.alu64_imm("add", R3, lay.aux_id))
    probe_read_to_stack(b, _PROG_ENTRY_AT, PROG_ENTRY_SIZE)
    b.jmp_imm("jne", R0, 0, "out")

    # A task header first, unless this pass has written this task's already.  The state
    # remembers the pass (session), the task and the fd (seq_num) of the last header.  When
    # a read() buffer fills up, the kernel drops the output of the fd that overflowed it and
    # calls the program again for the same position (same seq_num) on the next read(): the
    # header written the first time was dropped too, so it is written again.  Extra headers
    # are harmless; a missing one would give the entries to the task before.
    b.emit(asm.ldx_mem(8, R1, R6, lay.ctx_meta))
    b.emit(asm.ldx_mem(8, R2, R1, lay.meta_session_id))
    b.emit(asm.ldx_mem(8, R3, R9, _state("header_session")))
    b.jmp_reg("jne", R2, R3, "header")
    b.emit(asm.ldx_mem(4, R2, R8, lay.task_tgid))
    b.emit(asm.ldx_mem(4, R3, R9, _state("header_tgid")))
    b.jmp_reg("jne", R2, R3, "header")
    b.emit(asm.ldx_mem(8, R2, R1, lay.meta_seq_num))
    b.emit(asm.ldx_mem(8, R3, R9, _state("header_seq_num")))
    b.jmp_reg("jne", R2, R3, "entry")

    b.label("header")
    b.emit(asm.ldx_mem(8, R1, R6, lay.ctx_meta))
    b.emit(asm.ldx_mem(8, R2, R1, lay.meta_session_id))
    b.emit(asm.stx_mem(8, R9, R2, _state("header_session")))
    b.emit(asm.ldx_mem(8, R2, R1, lay.meta_seq_num))
    b.emit(asm.stx_mem(8, R9, R2, _state("header_seq_num")))
    b.emit(asm.ldx_mem(4, R2, R8, lay.task_tgid))
    b.emit(asm.stx_mem(4, R9, R2, _state("header_tgid")))
    b.emit(asm.stx_mem(4, R10, R2, _TASK_AT + TaskHeader.tgid.offset))
    b.emit(asm.st_mem(4, R10, _TASK_AT + TaskHeader.mark.offset, MARK))
    b.emit(asm.st_mem(4, R10, _TASK_AT + TaskHeader.kind.offset, KIND_TASK))
    b.emit(asm.ldx_mem(8, R2, R8, lay.task_group_leader))
    for half in (0, 8):
        b.emit(asm.ldx_mem(8, R1, R2, lay.task_comm + half))
        b.emit(asm.stx_mem(8, R10, R1, _TASK_AT + TaskHeader.comm.offset + half))
    _seq_write(b, lay, _TASK_AT, ctypes.sizeof(TaskHeader))

    b.label("entry")
    b.jmp_imm("jeq", R7, VIA_LINK, "link_entry")
    _seq_write(b, lay, _PROG_ENTRY_AT, PROG_ENTRY_SIZE)
    b.ja("out")
    b.label("link_entry")
    b.emit(asm.st_mem(4, R10, _LINK_AT + LinkEntry.mark.offset, MARK))
    b.emit(asm.st_mem(4, R10, _LINK_AT + LinkEntry.kind.offset, KIND_LINK))
    _seq_write(b, lay, _LINK_AT, ctypes.sizeof(LinkEntry))
    b.label("out")
    b.emit(asm.mov64_imm(R0, 0), asm.exit_())
    return b.insns()


_MARK_BYTES = MARK.to_bytes(_WORD, "little")


def _next_mark(data: bytes, pos: int) -> int:
    """Byte offset of the first marked record at or after ``pos`` (a word boundary), or
    ``len(data)``.  A byte search, fast; a hit across two ids' words is stepped over."""
    while (pos := data.find(_MARK_BYTES, pos)) >= 0:
        if pos % _WORD == 0:
            return pos
        pos += 1
    return len(data)


def decode(data: bytes) -> list[TaskFds]:
    """The tasks of one pass's output, in the order of the walk (a task may come twice: a
    thread with a file table of its own).  A torn or unknown record ends the decoding."""
    end = len(data) - len(data) % _WORD
    tasks: list[TaskFds] = []
    pos = 0
    while pos + _MARKED.size <= end:
        # A marked record (the stream begins with one): a task header or a link entry.
        mark, kind = _MARKED.unpack_from(data, pos)
        if mark == MARK and kind == KIND_TASK and pos + TASK_HEADER.size <= end:
            _, _, comm, tgid = TASK_HEADER.unpack_from(data, pos)
            tasks.append(TaskFds(tgid, comm))
            pos += TASK_HEADER.size
        elif mark == MARK and kind == KIND_LINK and tasks and pos + LINK_ENTRY.size <= end:
            tasks[-1].link_ids.append(LINK_ENTRY.unpack_from(data, pos)[2])
            pos += LINK_ENTRY.size
        else:
            break
        # Then the task's program fds up to the next marked record, copied in one go.
        run_end = min(_next_mark(data, pos), end)
        tasks[-1].prog_ids.frombytes(data[pos:run_end])
        pos = run_end
    return tasks


def owners_from_records(
    data: bytes, cache: dict[OwnerKey, Owner] | None = None
) -> tuple[dict[int, tuple[Owner, ...]], dict[OwnerKey, Owner]]:
    """:func:`group_by_program` of one pass's raw output."""
    return group_by_program(decode(data), cache)


class OwnersIterator(OwnedFds):
    """The loaded, calibrated ``iter/task_file`` program.  Close it (or use ``with``).

    Raises :class:`BpfError` when loading or calibration fails (for instance in a pid
    namespace whose pids differ from the kernel's global tgids): the caller then scans /proc.
    Passes are serialised: the program keeps per-pass state in its map.
    """

    def __init__(self, layout: OwnersLayout) -> None:
        self.layout = layout
        super().__init__()
        self._owner_cache: dict[OwnerKey, Owner] = {}
        self._one_pass = threading.Lock()
        try:
            self._state = self._keep(
                create_owned_map(MapType.ARRAY, 4, ctypes.sizeof(_State), 1, "otel_bpf_own")
            )
            insns = build_program(layout, self._state.fileno())
            self._load(insns, PROGRAM_NAME, layout.attach_btf_id)
            self._calibrate()
        except BaseException:
            self.close()
            raise

    def _calibrate(self) -> None:
        self._update_state(_State(prog_fd=self.prog_fd, link_fd=self.link_fd))
        read_iterator(self.link)  # learns f_op; files seen before ours are not reported
        state = self._lookup_state()
        if not state.prog_fop or not state.link_fop:
            raise BpfError(
                errno.ESRCH,
                "iter/task_file calibration did not see this process's own BPF fds",
            )
        mine = [t for t in self.read() if t.tgid == os.getpid()]
        if not any(self.prog_id in t.prog_ids and self.prog_id in t.link_ids for t in mine):
            raise BpfError(
                errno.ESRCH,
                "iter/task_file reports this process under another pid (a pid namespace?)",
            )

    def _state_attr(self, key: ctypes.c_uint32, value: _State) -> MapElemAttr:
        return MapElemAttr(
            self._state.fileno(), 0, ctypes.addressof(key), ctypes.addressof(value), 0
        )

    def _update_state(self, value: _State) -> None:
        key = ctypes.c_uint32(0)
        bpf(Cmd.MAP_UPDATE_ELEM, self._state_attr(key, value), "owners state")

    def _lookup_state(self) -> _State:
        key, value = ctypes.c_uint32(0), _State()
        bpf(Cmd.MAP_LOOKUP_ELEM, self._state_attr(key, value), "owners state")
        return value

    def read_raw(self) -> bytes:
        """One pass's output, undecoded."""
        with self._one_pass:
            return read_iterator(self.link)

    def read(self) -> list[TaskFds]:
        """One pass: every task holding a program or link fd, with those fds' program ids."""
        return decode(self.read_raw())

    def owners(self) -> dict[int, tuple[Owner, ...]]:
        """Program id -> holders, one per process sorted by pid, grouped as the /proc scan's
        (:func:`otel_bpf.kernel.owners.group_by_program`)."""
        owners, self._owner_cache = group_by_program(self.read(), self._owner_cache)
        return owners
