"""An fd this process owns for a kernel object (program, map, link, ...), closed exactly once.

A BPF program, map or link lives while an fd (or a pin) refers to it, so whoever holds the
fd holds the object.  :class:`KernelFd` makes that ownership explicit: ``close()`` (or the end
of a ``with`` block) releases it, a second close does nothing, and its repr says what it is
(``<KernelFd prog id=12 fd=7>``).  ``fileno()`` is the number for the syscalls; the object is
also accepted where an int fd is (``operator.index``), the thin compatibility for code that
still passes plain ints.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable
from types import TracebackType

from otel_bpf.kernel.syscall import close as close_fd

__all__ = ["KernelFd", "fd_number"]


class KernelFd:
    """One owned fd of kind ``kind`` (``"prog"``, ``"map"``, ``"link"``, ...) and kernel id."""

    __slots__ = ("_fd", "_lock", "id", "kind")

    def __init__(self, fd: int, kind: str, id: int | None = None) -> None:
        self._fd: int | None = operator.index(fd)
        self._lock = threading.Lock()
        self.kind = kind
        self.id = id
        """The kernel's id of the object (what bpftool shows), None when not known."""

    @classmethod
    def adopt(cls, fd: int, kind: str, id_of: Callable[[int], int] | None = None) -> KernelFd:
        """Own ``fd``, its id read by ``id_of``; the fd is closed when that read fails."""
        if id_of is None:
            return cls(fd, kind)
        try:
            return cls(fd, kind, id_of(fd))
        except BaseException:
            close_fd(fd)
            raise

    @property
    def closed(self) -> bool:
        return self._fd is None

    def fileno(self) -> int:
        """The fd number; ValueError once closed (a number reused by another file is worse)."""
        fd = self._fd
        if fd is None:
            raise ValueError(f"{self!r} is closed")
        return fd

    __index__ = fileno

    def close(self) -> None:
        """Close the fd (the object goes when nothing else holds it); again does nothing."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is not None:
            close_fd(fd)

    def detach(self) -> int:
        """Give up ownership: the fd number, which the caller now closes."""
        with self._lock:
            fd, self._fd = self._fd, None
        if fd is None:
            raise ValueError(f"{self!r} is closed")
        return fd

    def __enter__(self) -> KernelFd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        ident = "" if self.id is None else f" id={self.id}"
        state = "closed" if self._fd is None else f"fd={self._fd}"
        return f"<KernelFd {self.kind}{ident} {state}>"


def fd_number(fd: KernelFd | int) -> int:
    """The fd number of an owned fd or of a plain int."""
    return operator.index(fd)
