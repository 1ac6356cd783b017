"""The one ``bpf(2)`` wrapper: ctypes, EINTR retried, errno turned into typed errors."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform

from otel_bpf.kernel._uapi import Cmd
from otel_bpf.kernel.errors import COMMAND_MIN_KERNEL, BpfError, error_for, unsupported_command
from otel_bpf.kernel.system import kernel_release

# __NR_bpf per architecture (arch/*/include/uapi/asm/unistd*.h).
_SYSCALL_NUMBERS = {
    "x86_64": 321,
    "aarch64": 280,
    "arm64": 280,
}

libc = ctypes.CDLL(None, use_errno=True)
"""The process's one libc handle (errno kept per call); the demo's unshare and prctl use it too."""
# No argtypes: callers pass ctypes arguments built once (the per-program pass reuses them
# every call), which skips the per-call conversion a typed prototype would do.
_syscall = libc.syscall
_syscall.restype = ctypes.c_long


def syscall_number(machine: str | None = None) -> int:
    """``__NR_bpf`` for ``machine`` (default: this host)."""
    arch = machine or platform.machine()
    try:
        return _SYSCALL_NUMBERS[arch]
    except KeyError:
        raise BpfError(errno.ENOSYS, f"otel_bpf supports x86_64 and aarch64, not {arch}") from None


def raw_bpf(args: tuple[ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_uint]) -> int:
    """``syscall(*args)`` retried on EINTR: the result, or ``-errno`` (no exception).

    ``args`` is what :func:`prepared` returns: for calls repeated with one attr buffer.
    """
    ret: int
    while (ret := _syscall(*args)) < 0:
        err = ctypes.get_errno()
        if err != errno.EINTR:
            return -err
    return ret


def prepared(
    cmd: Cmd, attr: ctypes.Structure | ctypes.Array[ctypes.c_char]
) -> tuple[ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_uint]:
    """The arguments of ``bpf(cmd, &attr, sizeof(attr))`` for :func:`raw_bpf`."""
    return (
        ctypes.c_long(_nr_bpf()),
        ctypes.c_long(int(cmd)),
        ctypes.c_void_p(ctypes.addressof(attr)),
        ctypes.c_uint(ctypes.sizeof(attr)),
    )


_NR_BPF: int | None = None


def _nr_bpf() -> int:
    global _NR_BPF
    if _NR_BPF is None:
        _NR_BPF = syscall_number()
    return _NR_BPF


def bpf(cmd: Cmd, attr: ctypes.Structure | ctypes.Array[ctypes.c_char], detail: str = "") -> int:
    """Call ``bpf(cmd, &attr, sizeof(attr))`` and return its non-negative result.

    Retries on EINTR.  Raises a subclass of :class:`BpfError` (see :func:`command_error`).
    """
    ret = raw_bpf(prepared(cmd, attr))
    if ret < 0:
        raise command_error(-ret, cmd, detail)
    return ret


def command_error(err: int, cmd: Cmd, detail: str = "") -> BpfError:
    """The typed error for ``err`` from ``cmd``: an EINVAL from a command the running kernel
    does not know is reported as "kernel X.Y lacks ..."."""
    if err == errno.EINVAL and not command_known(cmd):
        return unsupported_command(cmd.uapi_name)
    return error_for(err, cmd.uapi_name, detail)


def command_known(cmd: Cmd) -> bool:
    """Whether the running kernel is new enough for ``cmd``.

    An unknown command and a bad argument both give EINVAL, so the kernel cannot be asked;
    the release is compared with the version that added the command.  Vendor kernels that
    backport a command are still served: this is only consulted after an EINVAL.
    """
    need = COMMAND_MIN_KERNEL.get(cmd.uapi_name)
    if need is None:
        return True
    major, minor = (int(x) for x in need.split("."))
    return kernel_at_least(major, minor)


def kernel_at_least(major: int, minor: int) -> bool:
    """Whether the running kernel's release is at least ``major.minor``."""
    try:
        parts = kernel_release().split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError):
        return True


def close(fd: int) -> None:
    """Close a BPF object fd, ignoring EINTR (on Linux the fd is released regardless)."""
    with contextlib.suppress(InterruptedError):
        os.close(fd)
