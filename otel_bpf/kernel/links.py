"""BPF links (``BPF_LINK_CREATE``) and the network namespace a test link can live in."""

from __future__ import annotations

import ctypes
import os

from otel_bpf.kernel._uapi import Cmd, LinkCreateAttr
from otel_bpf.kernel.syscall import bpf

CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def link_create(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> int:
    """Attach ``prog_fd`` to ``target_fd`` (an fd, or an ifindex for XDP) and return the link fd.

    The attachment lasts as long as the link fd (or a pin) exists; closing the program fd
    afterwards keeps the program loaded through the link.
    """
    attr = LinkCreateAttr(
        prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type, flags=flags
    )
    return bpf(Cmd.LINK_CREATE, attr, f"prog fd {prog_fd} -> {target_fd}")


def unshare_netns() -> None:
    """Move the calling thread into a new network namespace (it holds only ``lo``, down)."""
    if _libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
