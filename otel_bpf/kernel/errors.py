"""Typed errors raised by the kernel boundary.

Everything above ``otel_bpf.kernel`` sees these exceptions, never an errno.  Their messages
are written for the person running the tool: they say what is missing and how to fix it.
"""

from __future__ import annotations

import errno
import os

from otel_bpf.kernel import system

# The kernel-internal ENOTSUPP (524) leaks to user space from some BPF paths; Python's
# errno module does not name it.
ENOTSUPP = 524


class BpfError(OSError):
    """A bpf(2) call or a procfs read failed for a reason the caller may report."""


class BpfPermissionError(BpfError):
    """The process lacks the privileges a BPF command needs (EPERM/EACCES)."""


class BpfUnsupportedError(BpfError):
    """The running kernel does not know a command, a program type or a field."""


class BpfNotFoundError(BpfError):
    """The object (program, map, link, BTF) went away between two calls (ENOENT)."""


# Minimum kernel for each command we use, for messages such as
# "kernel 5.4 lacks BPF_ENABLE_STATS, needs >= 5.8".
COMMAND_MIN_KERNEL: dict[str, str] = {
    "BPF_MAP_CREATE": "3.18",
    "BPF_PROG_LOAD": "3.18",
    "BPF_PROG_ATTACH": "4.10",
    "BPF_PROG_DETACH": "4.10",
    "BPF_PROG_TEST_RUN": "4.12",
    "BPF_PROG_GET_NEXT_ID": "4.13",
    "BPF_MAP_GET_NEXT_ID": "4.13",
    "BPF_PROG_GET_FD_BY_ID": "4.13",
    "BPF_MAP_GET_FD_BY_ID": "4.13",
    "BPF_OBJ_GET_INFO_BY_FD": "4.13",
    "BPF_BTF_LOAD": "4.18",
    "BPF_BTF_GET_FD_BY_ID": "4.18",
    "BPF_LINK_CREATE": "5.7",
    "BPF_LINK_GET_FD_BY_ID": "5.8",
    "BPF_LINK_GET_NEXT_ID": "5.8",
    "BPF_ENABLE_STATS": "5.8",
    "BPF_ITER_CREATE": "5.8",
}

# What each command needs, for EPERM messages.  CAP_SYS_ADMIN is required by the
# *_GET_FD_BY_ID and *_GET_NEXT_ID commands and by BPF_ENABLE_STATS on every kernel;
# CAP_BPF (5.8+) suffices for loading most program types; networking program types
# also need CAP_NET_ADMIN.
COMMAND_PRIVILEGES: dict[str, str] = {
    "BPF_PROG_GET_NEXT_ID": "CAP_SYS_ADMIN",
    "BPF_MAP_GET_NEXT_ID": "CAP_SYS_ADMIN",
    "BPF_LINK_GET_NEXT_ID": "CAP_SYS_ADMIN",
    "BPF_PROG_GET_FD_BY_ID": "CAP_SYS_ADMIN",
    "BPF_MAP_GET_FD_BY_ID": "CAP_SYS_ADMIN",
    "BPF_LINK_GET_FD_BY_ID": "CAP_SYS_ADMIN",
    "BPF_BTF_GET_FD_BY_ID": "CAP_SYS_ADMIN",
    "BPF_ENABLE_STATS": "CAP_SYS_ADMIN",
    "BPF_PROG_LOAD": "CAP_BPF (plus CAP_NET_ADMIN for network program types, "
    "CAP_PERFMON for tracing)",
    "BPF_MAP_CREATE": "CAP_BPF",
    "BPF_BTF_LOAD": "CAP_BPF",
    "BPF_LINK_CREATE": "CAP_BPF and CAP_NET_ADMIN",
    "BPF_PROG_ATTACH": "CAP_NET_ADMIN",
}


def error_for(err: int, command: str, detail: str = "") -> BpfError:
    """Turn an errno from ``command`` into a typed exception with a readable message."""
    what = f"{command}{': ' + detail if detail else ''}"
    if err in (errno.EPERM, errno.EACCES):
        needed = COMMAND_PRIVILEGES.get(command, "CAP_BPF and CAP_SYS_ADMIN")
        return BpfPermissionError(
            err,
            f"permission denied for {what}: needs {needed} (run as root, or grant "
            f"the capabilities with setcap/systemd AmbientCapabilities)",
        )
    if err == errno.ENOENT:
        return BpfNotFoundError(err, f"{what}: object no longer exists")
    if err == errno.ENOSYS:
        return BpfUnsupportedError(
            err,
            f"kernel {system.kernel_version()} has no bpf(2) system call (CONFIG_BPF_SYSCALL off)",
        )
    if err in (errno.EOPNOTSUPP, ENOTSUPP):
        return BpfUnsupportedError(
            err, f"{what}: not supported by kernel {system.kernel_version()}"
        )
    # EINVAL is both "unknown command" and "bad argument"; callers that probe a command
    # turn it into unsupported_command() themselves.
    return BpfError(err, f"{what}: {os.strerror(err) if err != ENOTSUPP else 'not supported'}")


def unsupported_command(command: str) -> BpfUnsupportedError:
    """The error for a bpf(2) command the running kernel does not know."""
    need = COMMAND_MIN_KERNEL.get(command)
    suffix = f", needs >= {need}" if need else ""
    return BpfUnsupportedError(
        errno.EINVAL, f"kernel {system.kernel_version()} lacks {command}{suffix}"
    )
