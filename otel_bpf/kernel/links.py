"""BPF links (``BPF_LINK_CREATE``, Linux 5.7): attachments that end when their fd closes.

A link fd owns the attachment, so a process that dies (even by SIGKILL) detaches its
programs; nothing is left attached to an interface or a cgroup.
"""

from __future__ import annotations

from otel_bpf.kernel._uapi import AttachType, Cmd, LinkCreateAttr
from otel_bpf.kernel.syscall import bpf

# linux/if_link.h: XDP attach modes, passed as link_create.flags for BPF_XDP.
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2


def link_create(prog_fd: int, target_fd: int, attach_type: int, flags: int = 0) -> int:
    """Attach ``prog_fd`` to ``target_fd`` (a cgroup directory fd, or an ifindex for XDP and
    tcx) and return the link fd; closing it detaches the program."""
    attr = LinkCreateAttr()
    attr.prog_fd = prog_fd
    attr.target_fd = target_fd
    attr.attach_type = attach_type
    attr.flags = flags
    detail = f"attach type {_attach_name(attach_type)}"
    return bpf(Cmd.LINK_CREATE, attr, detail)


def attach_xdp(prog_fd: int, ifindex: int, *, generic: bool = True) -> int:
    """Attach an XDP program to interface ``ifindex``; generic (SKB) mode by default, which
    every driver supports.  Returns the link fd."""
    flags = XDP_FLAGS_SKB_MODE if generic else XDP_FLAGS_DRV_MODE
    return link_create(prog_fd, ifindex, AttachType.XDP, flags)


def attach_cgroup(prog_fd: int, cgroup_fd: int, attach_type: int) -> int:
    """Attach a cgroup program (e.g. cgroup_skb egress) to the cgroup open as ``cgroup_fd``.
    Returns the link fd."""
    return link_create(prog_fd, cgroup_fd, attach_type)


def _attach_name(attach_type: int) -> str:
    try:
        return AttachType(attach_type).name.lower()
    except ValueError:
        return str(attach_type)
