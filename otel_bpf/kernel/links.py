"""BPF links (``BPF_LINK_CREATE``): attachments that last as long as their fd."""

from __future__ import annotations

import ctypes

from otel_bpf.kernel._uapi import Cmd, InfoByFdAttr, LinkCreateAttr, LinkInfoHead
from otel_bpf.kernel.fd import KernelFd, fd_number
from otel_bpf.kernel.syscall import bpf


def link_create(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> int:
    """Attach ``prog_fd`` to ``target_fd`` (an fd, or an ifindex for XDP) and return the link fd.

    The attachment lasts as long as the link fd (or a pin) exists; closing the program fd
    afterwards keeps the program loaded through the link.
    """
    attr = LinkCreateAttr(
        prog_fd=prog_fd, target_fd=target_fd, attach_type=attach_type, flags=flags
    )
    return bpf(Cmd.LINK_CREATE, attr, f"prog fd {prog_fd} -> {target_fd}")


def link_id(link_fd: int) -> int:
    """The kernel's id of the link behind ``link_fd``."""
    info = LinkInfoHead()
    attr = InfoByFdAttr(bpf_fd=link_fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, f"link fd {link_fd}")
    return int(info.id)


def create_owned_link(
    prog_fd: KernelFd | int, target_fd: int, attach_type: int, flags: int = 0
) -> KernelFd:
    """:func:`link_create` as a :class:`KernelFd` (kind ``link``, with the link's id):
    closing it detaches the program."""
    fd = link_create(fd_number(prog_fd), target_fd, attach_type, flags)
    return KernelFd.adopt(fd, "link", link_id)
