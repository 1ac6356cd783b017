"""BPF links (``BPF_LINK_CREATE``): attachments that last as long as their fd."""

from __future__ import annotations

from otel_bpf.kernel._uapi import Cmd, LinkCreateAttr
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
