"""bpf(2) pieces shared by the iterator programs: map creation, attach, one pass of reads."""

from __future__ import annotations

import ctypes
import os
from typing import TypeVar

from otel_bpf.kernel._uapi import Cmd, u32
from otel_bpf.kernel.links import link_create
from otel_bpf.kernel.syscall import bpf, close

# enum bpf_attach_type: BPF_TRACE_ITER (5.8).
BPF_TRACE_ITER = 28
# enum bpf_map_type values created here.
MAP_TYPE_ARRAY = 2
MAP_TYPE_PERCPU_ARRAY = 6

# Helper ids (enum bpf_func_id in include/uapi/linux/bpf.h).
HELPER_GET_CURRENT_PID_TGID = 14
HELPER_PROBE_READ_KERNEL = 113  # 5.5
HELPER_SEQ_WRITE = 127  # 5.7
HELPER_MAP_LOOKUP_PERCPU_ELEM = 195  # 5.19

# bpf_seq_read() fills at most PAGE_SIZE << 3 bytes per read() call; a larger buffer only
# saves nothing, a smaller one splits records across calls.
_READ_SIZE = 1 << 16


class IterCreateAttr(ctypes.Structure):
    """The ``bpf_attr.iter_create`` member used by ``BPF_ITER_CREATE`` (5.8)."""

    _fields_ = [("link_fd", u32), ("flags", u32)]


def attach_iterator(prog_fd: int) -> int:
    """``BPF_LINK_CREATE`` for an iterator program (no ``iter_info``); returns the link fd."""
    return link_create(prog_fd, 0, BPF_TRACE_ITER)


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
