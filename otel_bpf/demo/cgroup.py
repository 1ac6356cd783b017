"""cgroup v2: find the hierarchy, create and remove a child cgroup, move a process into it.

Cgroup directories outlive the processes that made them, so the caller removes what it
creates; :func:`remove_stale` sweeps directories left by processes that were killed.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os

from otel_bpf.kernel.fd import KernelFd
from otel_bpf.kernel.links import create_owned_link
from otel_bpf.kernel.system import cgroup2_mount_point


class CgroupError(OSError):
    """The cgroup v2 hierarchy is missing or an operation on it failed."""


def cgroup2_mount(mounts: str = "/proc/mounts") -> str:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or, in the hybrid
    layout, ``/sys/fs/cgroup/unified``)."""
    mount = cgroup2_mount_point(mounts)
    if mount is None:
        raise CgroupError(errno.ENOENT, "no cgroup2 file system is mounted (see /proc/mounts)")
    return mount


def current_cgroup(pid: int | str = "self") -> str:
    """The absolute directory of ``pid``'s cgroup v2 (the ``0::`` line of /proc/PID/cgroup)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                rel = line[3:].strip()
                return os.path.join(cgroup2_mount(), rel.lstrip("/"))
    raise CgroupError(errno.ENOENT, f"process {pid} has no cgroup v2 membership")


def create(name: str, parent: str | None = None) -> str:
    """Create cgroup ``name`` under ``parent`` (default: the hierarchy root); return its path."""
    path = os.path.join(parent or cgroup2_mount(), name)
    try:
        os.mkdir(path)
    except OSError as err:
        raise CgroupError(err.errno, f"creating cgroup {path}: {err.strerror}") from None
    return path


def join(path: str) -> None:
    """Move the calling process (all its threads) into the cgroup at ``path``."""
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write("0")
    except OSError as err:
        raise CgroupError(err.errno, f"joining cgroup {path}: {err.strerror}") from None


def remove(path: str) -> bool:
    """Remove the (empty) cgroup at ``path``; False if it was still in use, True otherwise."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as err:
        if err.errno == errno.EBUSY:
            return False
        raise CgroupError(err.errno, f"removing cgroup {path}: {err.strerror}") from None
    return True


def open_dir(path: str) -> int:
    """An O_RDONLY directory fd for ``path``, the target fd that cgroup attachment takes."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise CgroupError(err.errno, f"opening cgroup {path}: {err.strerror}") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(prefix: str, parent: str | None = None) -> list[str]:
    """Remove cgroups named ``<prefix><pid>`` whose process no longer exists.

    Returns the paths removed.  Directories in use, or whose process still runs, are kept.
    """
    try:
        root = parent or cgroup2_mount()
        names = os.listdir(root)
    except OSError:
        return []
    removed = []
    for name in names:
        if not name.startswith(prefix) or not name[len(prefix) :].isdigit():
            continue
        if _pid_alive(int(name[len(prefix) :])):
            continue
        path = os.path.join(root, name)
        with contextlib.suppress(OSError):
            if remove(path):
                removed.append(path)
    return removed


def attach_program(prog: KernelFd | int, cgroup_fd: KernelFd | int, attach_type: int) -> KernelFd:
    """Attach a cgroup program (e.g. cgroup_skb egress) to the cgroup open as ``cgroup_fd``
    through a BPF link; returns the link, whose closing detaches the program."""
    return create_owned_link(prog, operator.index(cgroup_fd), attach_type)
