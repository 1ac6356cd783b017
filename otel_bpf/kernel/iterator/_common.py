"""bpf(2) pieces shared by the iterator programs: map creation, attach, one pass of reads."""

from __future__ import annotations

import os
from typing import TypeVar

from otel_bpf.kernel._uapi import AttachType, Cmd, IterCreateAttr
from otel_bpf.kernel.links import link_create
from otel_bpf.kernel.syscall import bpf, close

# bpf_seq_read() fills at most PAGE_SIZE << 3 bytes per read() call; a larger buffer only
# saves nothing, a smaller one splits records across calls.
_READ_SIZE = 1 << 16


def attach_iterator(prog_fd: int) -> int:
    """``BPF_LINK_CREATE`` for an iterator program (no ``iter_info``); returns the link fd."""
    return link_create(prog_fd, 0, AttachType.TRACE_ITER)


def read_iterator(link_fd: int) -> bytes:
    """One pass: ``BPF_ITER_CREATE`` on the link, ``read()`` to EOF, close."""
    fd = bpf(Cmd.ITER_CREATE, IterCreateAttr(link_fd, 0), "iterator")
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
    """The fds an iterator object holds (maps, program, link), closed together, newest first.

    Subclasses set them up with :meth:`_keep` inside a ``try`` that calls :meth:`close` on
    failure, so a half-built iterator releases what it took.
    """

    def __init__(self) -> None:
        self._fds: list[int] = []

    def _keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def close(self) -> None:
        """Release every fd held (the link first, so the program and maps go with it)."""
        while self._fds:
            close(self._fds.pop())

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
