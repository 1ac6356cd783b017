"""The ``iter/task_file`` program that finds eBPF programs attached to processes' sockets.

A socket filter (``SO_ATTACH_BPF``) or a reuseport program (``SO_ATTACH_REUSEPORT_EBPF``)
has no link, and the kernel answers no query about it: the only way to it is through the
socket, which only the processes holding it can name.  This program walks every task's file
table, turns each file into its socket with ``bpf_sock_from_file`` (NULL for other files,
the kernel's own ``f_op`` test), and follows ``sk->sk_filter->prog`` and
``sk->sk_reuseport_cb->prog`` to the program's id.

Classic BPF filters (``SO_ATTACH_FILTER``, ``SO_ATTACH_REUSEPORT_CBPF``) are converted by the
kernel into a ``struct bpf_prog`` too, but one that was never given an id (only
``BPF_PROG_LOAD`` allocates ids; the kernel's ``bpf_prog_was_classic()`` tells them apart by
their type, ``BPF_PROG_TYPE_UNSPEC``): a program whose id is 0 is not written.

The kernel's walk visits each thread group's file table once (threads sharing it are
skipped); a thread with a file table of its own (``unshare(CLONE_FILES)``) is visited too,
which :func:`decode` folds.  Each hit is one fixed-size record (:data:`RECORD`); hosts have
few such sockets, so a task header shared by its records (as the owners stream has) would
save little.
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import Helper
from otel_bpf.kernel.asm import R0, R1, R2, R6, R7, R8, R9, R10, Builder
from otel_bpf.kernel.errors import BpfError
from otel_bpf.kernel.iterator._common import OwnedFds, seq_write_from_stack
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf

PROGRAM_NAME = "otel_bpf_socks"

KIND_FILTER = 1
"""``sk->sk_filter``: the socket's own filter (``SO_ATTACH_BPF``)."""
KIND_REUSEPORT = 2
"""``sk->sk_reuseport_cb->prog``: the program of the socket's reuseport group."""

RECORD = struct.Struct("<IIIHH16s")
"""tgid, fd, prog_id, kind, the program's ``expected_attach_type`` (low 16 bits), and the
thread-group leader's comm (as /proc shows it).  Host byte order: little-endian hosts."""
_TGID, _FD, _PROG_ID, _KIND, _ATTACH_TYPE, _COMM = 0, 4, 8, 12, 14, 16
_RECORD_AT = -RECORD.size  # on the program's stack, 8-aligned (comm is copied 8 bytes at a time)
assert RECORD.size == 32 and _RECORD_AT % 8 == 0

# PROC_PID_INIT_INO: the inode of the initial pid namespace, whose pids the kernel's
# task->tgid are.
_INIT_PID_NS_INODE = 0xEFFFFFFC

BTF_NAMES = (
    "bpf_iter_task_file",
    "bpf_iter__task_file",
    "bpf_iter_meta",
    "task_struct",
    "socket",
    "sock",
    "sk_filter",
    "sock_reuseport",
    "bpf_prog",
    "bpf_prog_aux",
)


@dataclass(frozen=True, slots=True)
class SocketsLayout:
    """BTF ids and offsets of the sockets program."""

    attach_btf_id: int  # FUNC bpf_iter_task_file
    ctx_meta: int
    ctx_task: int
    ctx_fd: int
    ctx_file: int
    meta_seq: int
    task_tgid: int
    task_group_leader: int
    task_comm: int
    socket_sk: int
    sk_filter: int
    sk_reuseport_cb: int
    filter_prog: int
    reuseport_prog: int
    prog_expected_attach_type: int
    prog_aux: int
    aux_id: int

    @classmethod
    def from_btf(cls, btf: VmlinuxBtf) -> SocketsLayout:
        """Read every id and offset from vmlinux BTF; VmlinuxBtfError (a BpfError) naming the
        missing type or member when the running kernel lacks one."""
        btf.prefetch(BTF_NAMES)
        off = btf.member_offset
        return cls(
            attach_btf_id=btf.func_id("bpf_iter_task_file"),
            ctx_meta=off("bpf_iter__task_file", "meta"),
            ctx_task=off("bpf_iter__task_file", "task"),
            ctx_fd=off("bpf_iter__task_file", "fd"),
            ctx_file=off("bpf_iter__task_file", "file"),
            meta_seq=off("bpf_iter_meta", "seq"),
            task_tgid=off("task_struct", "tgid"),
            task_group_leader=off("task_struct", "group_leader"),
            task_comm=off("task_struct", "comm"),
            socket_sk=off("socket", "sk"),
            sk_filter=off("sock", "sk_filter"),
            sk_reuseport_cb=off("sock", "sk_reuseport_cb"),
            filter_prog=off("sk_filter", "prog"),
            reuseport_prog=off("sock_reuseport", "prog"),
            prog_expected_attach_type=off("bpf_prog", "expected_attach_type"),
            prog_aux=off("bpf_prog", "aux"),
            aux_id=off("bpf_prog_aux", "id"),
        )


def _write_record(b: Builder, lay: SocketsLayout, kind: int, done: str) -> None:
    """With R7 = a ``struct bpf_prog *`` (not NULL), R6 = ctx, R8 = task: write its record,
    unless its id is 0 (a classic filter); then go to ``done``.

    Every pointer here is typed by BTF (the helper's return, then each member's type), so the
    verifier turns the loads into faulting-safe ones (a fault reads 0): no
    ``bpf_probe_read_kernel`` is needed.
    """
    b.emit(asm.ldx_mem(8, R1, R7, lay.prog_aux))
    b.jmp_imm("jeq", R1, 0, done)
    b.emit(asm.ldx_mem(4, R1, R1, lay.aux_id))
    b.jmp_imm("jeq", R1, 0, done)
    b.emit(asm.stx_mem(4, R10, R1, _RECORD_AT + _PROG_ID))
    b.emit(asm.st_mem(2, R10, _RECORD_AT + _KIND, kind))
    b.emit(asm.ldx_mem(4, R1, R7, lay.prog_expected_attach_type))
    b.emit(asm.stx_mem(2, R10, R1, _RECORD_AT + _ATTACH_TYPE))
    b.emit(asm.ldx_mem(4, R1, R8, lay.task_tgid))
    b.emit(asm.stx_mem(4, R10, R1, _RECORD_AT + _TGID))
    b.emit(asm.ldx_mem(4, R1, R6, lay.ctx_fd))
    b.emit(asm.stx_mem(4, R10, R1, _RECORD_AT + _FD))
    b.emit(asm.ldx_mem(8, R2, R8, lay.task_group_leader))
    for half in (0, 8):
        b.emit(asm.ldx_mem(8, R1, R2, lay.task_comm + half))
        b.emit(asm.stx_mem(8, R10, R1, _RECORD_AT + _COMM + half))
    seq_write_from_stack(b, lay.ctx_meta, lay.meta_seq, _RECORD_AT, RECORD.size)
    b.ja(done)


def build_program(layout: SocketsLayout) -> list[asm.Insn]:
    """The task_file program."""
    lay = layout
    b = Builder()
    # R6 = ctx, R8 = task, R9 = sk, R7 = the program being written.
    b.emit(asm.mov64_reg(R6, R1))
    b.emit(asm.ldx_mem(8, R1, R6, lay.ctx_file))
    b.jmp_imm("jeq", R1, 0, "out")
    b.emit(asm.ldx_mem(8, R8, R6, lay.ctx_task))
    b.jmp_imm("jeq", R8, 0, "out")
    # Most files are not sockets: the helper's f_op comparison ends them here.
    b.emit(asm.call(Helper.SOCK_FROM_FILE))
    b.jmp_imm("jeq", R0, 0, "out")
    b.emit(asm.ldx_mem(8, R9, R0, lay.socket_sk))
    b.jmp_imm("jeq", R9, 0, "out")

    b.emit(asm.ldx_mem(8, R1, R9, lay.sk_filter))
    b.jmp_imm("jeq", R1, 0, "reuseport")
    b.emit(asm.ldx_mem(8, R7, R1, lay.filter_prog))
    b.jmp_imm("jeq", R7, 0, "reuseport")
    _write_record(b, lay, KIND_FILTER, "reuseport")

    b.label("reuseport")
    b.emit(asm.ldx_mem(8, R1, R9, lay.sk_reuseport_cb))
    b.jmp_imm("jeq", R1, 0, "out")
    b.emit(asm.ldx_mem(8, R7, R1, lay.reuseport_prog))
    b.jmp_imm("jeq", R7, 0, "out")
    _write_record(b, lay, KIND_REUSEPORT, "out")

    b.label("out")
    b.emit(asm.mov64_imm(R0, 0), asm.exit_())
    return b.insns()


@dataclass(frozen=True, slots=True)
class SocketProgram:
    """One program attached to one socket, as one process holds it."""

    pid: int
    fd: int
    prog_id: int
    kind: int
    """:data:`KIND_FILTER` or :data:`KIND_REUSEPORT`."""
    attach_type: int
    """The program's ``expected_attach_type`` (meaningful for ``sk_reuseport`` programs only:
    ``BPF_SK_REUSEPORT_SELECT`` or ``..._SELECT_OR_MIGRATE``)."""
    comm: str
    """The process's name (untrusted text, not sanitised)."""


def records(data: bytes) -> list[bytes]:
    """The whole records of one pass's output, undecoded.  Trailing bytes short of a record
    are ignored: the kernel writes each record whole, so only a damaged stream has them."""
    size = RECORD.size
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


def decode_record(record: bytes) -> SocketProgram | None:
    """One record (:data:`RECORD`); None for a kind this version does not know."""
    tgid, fd, prog_id, kind, attach_type, comm = RECORD.unpack(record)
    if kind not in (KIND_FILTER, KIND_REUSEPORT):
        return None
    name = comm.split(b"\0", 1)[0].decode(errors="replace")
    return SocketProgram(tgid, fd, prog_id, kind, attach_type, name)


def decode(data: bytes) -> list[SocketProgram]:
    """The records of one pass, once per (process, fd, kind, program) in the order of the
    walk; unknown kinds and a torn last record are left out (:func:`records`)."""
    out: list[SocketProgram] = []
    seen: set[tuple[int, int, int, int]] = set()
    for record in records(data):
        found = decode_record(record)
        if found is None:
            continue
        key = (found.pid, found.fd, found.kind, found.prog_id)
        if key not in seen:
            seen.add(key)
            out.append(found)
    return out


def _check_pid_namespace() -> None:
    """The records carry the kernel's (initial namespace's) pids: refuse to report them as
    ours when this process sees other pids."""
    try:
        inode = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return  # no namespace files: nothing to compare, and no namespaces either
    if inode != _INIT_PID_NS_INODE:
        raise BpfError(
            errno.EOPNOTSUPP,
            "this process runs in a pid namespace of its own: the pids of processes holding"
            " sockets would not be pids it can name (run it with the host's pid namespace)",
        )


class SocketsIterator(OwnedFds):
    """The loaded ``iter/task_file`` sockets program.  Close it (or use ``with``).

    Raises :class:`BpfError` when the kernel lacks a type or member it needs, or refuses the
    program (``bpf_sock_from_file`` came with 5.11)."""

    def __init__(self, layout: SocketsLayout | None = None) -> None:
        _check_pid_namespace()
        if layout is None:
            with VmlinuxBtf() as btf:
                layout = SocketsLayout.from_btf(btf)
        self.layout = layout
        super().__init__()
        try:
            insns = build_program(layout)
            self._load(insns, PROGRAM_NAME, layout.attach_btf_id)
        except BaseException:
            self.close()
            raise

    def read(self) -> list[SocketProgram]:
        """One pass: every (process, fd) whose socket has an eBPF filter or reuseport program."""
        return decode(self.read_raw())


__all__ = [
    "KIND_FILTER",
    "KIND_REUSEPORT",
    "RECORD",
    "SocketProgram",
    "SocketsIterator",
    "SocketsLayout",
    "build_program",
    "decode",
    "decode_record",
    "records",
]
