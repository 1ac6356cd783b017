"""Pieces shared by the iterator programs: the helper calls they emit, loading, attaching,
one pass of reads."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import AttachType, Cmd, Helper, IterCreateAttr, ProgType
from otel_bpf.kernel.fd import KernelFd, fd_number
from otel_bpf.kernel.links import create_owned_link
from otel_bpf.kernel.loader import load_owned_program, program_id
from otel_bpf.kernel.syscall import bpf, close

# bpf_seq_read() fills at most PAGE_SIZE << 3 bytes per read() call; a larger buffer only
# saves nothing, a smaller one splits records across calls.
_READ_SIZE = 1 << 16


def load_iterator_program(insns: list[asm.Insn], name: str, attach_btf_id: int) -> KernelFd:
    """Load one of our iterator programs: ``BPF_PROG_TYPE_TRACING`` for ``TRACE_ITER`` on
    the ``bpf_iter_*`` function ``attach_btf_id``, GPL (``bpf_probe_read_kernel`` and
    ``bpf_seq_write`` are GPL-only helpers)."""
    return load_owned_program(
        ProgType.TRACING,
        asm.assemble(insns),
        name,
        license="GPL",
        expected_attach_type=AttachType.TRACE_ITER,
        attach_btf_id=attach_btf_id,
    )


def probe_read_to_stack(b: asm.Builder, dst_stack: int, size: int) -> None:
    """Emit ``R0 = bpf_probe_read_kernel(R10 + dst_stack, size, R3)``; R3 set by the
    caller (the kernel zeroes the destination when it cannot read)."""
    b.emit(asm.mov64_reg(asm.R1, asm.R10), asm.alu64_imm("add", asm.R1, dst_stack))
    b.emit(asm.mov64_imm(asm.R2, size), asm.call(Helper.PROBE_READ_KERNEL))


def seq_write_from_stack(
    b: asm.Builder, ctx_meta: int, meta_seq: int, stack_at: int, size: int
) -> None:
    """Emit ``bpf_seq_write(ctx->meta->seq, R10 + stack_at, size)``, the context in R6."""
    b.emit(asm.ldx_mem(8, asm.R1, asm.R6, ctx_meta), asm.ldx_mem(8, asm.R1, asm.R1, meta_seq))
    b.emit(asm.mov64_reg(asm.R2, asm.R10), asm.alu64_imm("add", asm.R2, stack_at))
    b.emit(asm.mov64_imm(asm.R3, size), asm.call(Helper.SEQ_WRITE))


def attach_iterator(prog: KernelFd | int) -> KernelFd:
    """``BPF_LINK_CREATE`` for an iterator program (no ``iter_info``); returns the link."""
    return create_owned_link(prog, 0, AttachType.TRACE_ITER)


def read_iterator(link: KernelFd | int) -> bytes:
    """One pass: ``BPF_ITER_CREATE`` on the link, ``read()`` to EOF, close."""
    fd = bpf(Cmd.ITER_CREATE, IterCreateAttr(fd_number(link), 0), "iterator")
    try:
        chunks = []
        while True:
            chunk = os.read(fd, _READ_SIZE)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        close(fd)


_T = TypeVar("_T", bound="OwnedFds")


class OwnedFds:
    """The kernel objects an iterator holds (maps, program, link), closed together, newest
    first.

    Subclasses set them up with :meth:`_keep` inside a ``try`` that calls :meth:`close` on
    failure, so a half-built iterator releases what it took, and set :attr:`prog`,
    :attr:`prog_id` and :attr:`link`.
    """

    prog: KernelFd
    """The loaded iterator program."""
    prog_id: int
    insn_count: int
    """How many instructions the program has."""
    link: KernelFd
    """The iterator link each pass is created from."""

    def __init__(self) -> None:
        self._fds: list[KernelFd] = []

    def _keep(self, fd: KernelFd) -> KernelFd:
        self._fds.append(fd)
        return fd

    def _load(
        self,
        insns: list[asm.Insn],
        name: str,
        attach_btf_id: int,
        attach: Callable[[KernelFd], KernelFd] = attach_iterator,
    ) -> None:
        """Load the program and attach it (``attach``: plain, or with the iterator's
        target), setting :attr:`insn_count`, :attr:`prog`, :attr:`prog_id` and :attr:`link`."""
        self.insn_count = len(insns)
        self.prog = self._keep(load_iterator_program(insns, name, attach_btf_id))
        self.prog_id = program_id(self.prog)
        self.link = self._keep(attach(self.prog))

    def read_raw(self) -> bytes:
        """One pass's output, undecoded (a new iterator fd each call)."""
        return read_iterator(self.link)

    @property
    def prog_fd(self) -> int:
        """The program's fd number (for code that passes ints)."""
        return self.prog.fileno()

    @property
    def link_fd(self) -> int:
        """The link's fd number (for code that passes ints)."""
        return self.link.fileno()

    @property
    def objects(self) -> tuple[KernelFd, ...]:
        """The kernel objects still held, oldest first."""
        return tuple(self._fds)

    def close(self) -> None:
        """Release every fd held (the link first, so the program and maps go with it)."""
        while self._fds:
            self._fds.pop().close()

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
