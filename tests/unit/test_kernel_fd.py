"""KernelFd: an owned fd closed exactly once, usable where an int fd is."""

from __future__ import annotations

import os

import pytest

from otel_bpf.kernel.fd import KernelFd, fd_number


def open_null() -> int:
    return os.open(os.devnull, os.O_RDONLY)


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_close_is_idempotent_and_fileno_fails_after() -> None:
    raw = open_null()
    fd = KernelFd(raw, "prog", 12)
    assert fd.fileno() == raw and fd_number(fd) == raw and not fd.closed
    assert repr(fd) == f"<KernelFd prog id=12 fd={raw}>"
    fd.close()
    assert fd.closed and not is_open(raw)
    fd.close()  # a second close must not close a number reused by another file
    assert repr(fd) == "<KernelFd prog id=12 closed>"
    with pytest.raises(ValueError, match="closed"):
        fd.fileno()


def test_second_close_leaves_a_reused_number_alone() -> None:
    raw = open_null()
    fd = KernelFd(raw, "map")
    fd.close()
    reused = open_null()
    try:
        fd.close()
        assert is_open(reused)
    finally:
        os.close(reused)


def test_context_manager_closes_even_on_error() -> None:
    raw = open_null()
    with pytest.raises(ZeroDivisionError), KernelFd(raw, "link") as fd:
        assert os.fstat(fd).st_ino == os.fstat(raw).st_ino  # accepted where an int fd is
        1 / 0  # noqa: B018
    assert fd.closed and not is_open(raw)


def test_detach_hands_the_fd_over() -> None:
    raw = open_null()
    fd = KernelFd(raw, "prog")
    assert fd.detach() == raw and fd.closed
    fd.close()
    assert is_open(raw)
    os.close(raw)
    with pytest.raises(ValueError):
        fd.detach()


def test_adopt_closes_the_fd_when_its_id_cannot_be_read() -> None:
    raw = open_null()

    def no_id(fd: int) -> int:
        raise OSError("gone")

    with pytest.raises(OSError, match="gone"):
        KernelFd.adopt(raw, "prog", no_id)
    assert not is_open(raw)
    raw = open_null()
    with KernelFd.adopt(raw, "prog", lambda fd: 7) as fd:
        assert fd.id == 7 and fd.fileno() == raw
