"""The host's network namespaces, each named by a path that opens it.

An interface index, a tc filter or an ``sk_lookup`` program means something only inside its
network namespace, so attach-point discovery visits every namespace.  A namespace lives as
long as a process is in it or a file holds it (``ip netns add`` bind-mounts one under
``/run/netns``); both are found here, one path per namespace, keyed by the namespace's inode
number (what ``ls -l /proc/<pid>/ns/net`` shows as ``net:[<inode>]``).
"""

from __future__ import annotations

import os
import threading
from contextlib import suppress

__all__ = [
    "FULL_RESCAN_EVERY",
    "NAMED_NETNS_DIRS",
    "ProcessNamespaces",
    "host_netns",
    "network_namespaces",
]

NAMED_NETNS_DIRS = ("/run/netns", "/var/run/netns")
"""Where ``ip netns`` keeps the namespaces it names."""


def host_netns(proc: str = "/proc") -> int | None:
    """The inode of the network namespace of process 1 (the host's, seen from a process in
    the host's PID namespace); None when it cannot be read."""
    return _netns_inode(f"{proc}/1/ns/net")


def network_namespaces(
    proc: str = "/proc", named_dirs: tuple[str, ...] = NAMED_NETNS_DIRS
) -> dict[int, str]:
    """Inode -> a path that opens it (``/proc/<pid>/ns/net`` or ``/run/netns/<name>``) for
    every network namespace that a visible process is in or that ``ip netns`` names.

    The process's own namespace comes first, then process 1's, so that a namespace is opened
    through the most stable path.  Processes that exit during the scan are skipped.  Each
    process's namespace is read once and remembered (:class:`ProcessNamespaces`): a listing
    stats only the processes it has not seen, plus all of them every
    :data:`FULL_RESCAN_EVERY` listings, for the rare process that moves to another namespace.
    """
    with _shared_lock:
        known = _shared.setdefault(proc, ProcessNamespaces(proc))
        return known.list(named_dirs)


FULL_RESCAN_EVERY = 32
"""Listings between two that read every process's namespace again (a process can enter
another namespace with ``setns`` or ``unshare``; a discovery lists two or three times)."""


class ProcessNamespaces:
    """The network namespace of each process under ``proc``, kept between listings.

    A namespace inode is a ``stat`` per process (about 5 µs): a host with thousands of
    processes would pay milliseconds per listing for what almost never changes.
    """

    def __init__(self, proc: str = "/proc", full_rescan_every: int = FULL_RESCAN_EVERY) -> None:
        self._proc = proc
        self._every = full_rescan_every
        self._listings = 0
        self._by_pid: dict[str, int | None] = {}

    def list(self, named_dirs: tuple[str, ...] = NAMED_NETNS_DIRS) -> dict[int, str]:
        proc = self._proc
        found: dict[int, str] = {}
        for path in (f"{proc}/self/ns/net", f"{proc}/1/ns/net"):
            inode = _netns_inode(path)
            if inode is not None and inode not in found:
                found[inode] = path
        for directory in named_dirs:
            with suppress(OSError):
                for name in sorted(os.listdir(directory)):
                    path = os.path.join(directory, name)
                    inode = _netns_inode(path)
                    if inode is not None and inode not in found:
                        found[inode] = path
        try:
            # Lowest pid first: the longest-lived process, usually, opens its namespace.
            pids = sorted((p for p in os.listdir(proc) if p.isdigit()), key=int)
        except OSError:
            pids = []
        full = self._listings % self._every == 0
        self._listings += 1
        previous = {} if full else self._by_pid
        by_pid: dict[str, int | None] = {}
        for pid in pids:
            inode = previous[pid] if pid in previous else _netns_inode(f"{proc}/{pid}/ns/net")
            by_pid[pid] = inode
            if inode is not None and inode not in found:
                found[inode] = f"{proc}/{pid}/ns/net"
        self._by_pid = by_pid  # exited processes are forgotten
        return found


_shared: dict[str, ProcessNamespaces] = {}
_shared_lock = threading.Lock()


def _netns_inode(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    # /run/netns may hold a plain file that is not (or no longer) a namespace mount: its
    # device is then the file system's, not nsfs's.  A namespace's stat is nsfs's inode.
    return st.st_ino if _is_nsfs(st) else None


_nsfs_dev: int | None = None


def _is_nsfs(st: os.stat_result) -> bool:
    global _nsfs_dev
    if _nsfs_dev is None:
        try:
            _nsfs_dev = os.stat("/proc/self/ns/net").st_dev
        except OSError:
            return False
    return st.st_dev == _nsfs_dev
