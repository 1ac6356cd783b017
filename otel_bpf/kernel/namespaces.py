"""The host's network namespaces, each named by a path that opens it.

An interface index, a tc filter or an ``sk_lookup`` program means something only inside its
network namespace, so attach-point discovery visits every namespace.  A namespace lives as
long as a process is in it or a file holds it (``ip netns add`` bind-mounts one under
``/run/netns``); both are found here, one path per namespace, keyed by the namespace's inode
number (what ``ls -l /proc/<pid>/ns/net`` shows as ``net:[<inode>]``).
"""

from __future__ import annotations

import os
from contextlib import suppress

__all__ = ["NAMED_NETNS_DIRS", "host_netns", "network_namespaces"]

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
    through the most stable path.  Processes that exit during the scan are skipped.
    """
    found: dict[int, str] = {}
    candidates = [f"{proc}/self/ns/net", f"{proc}/1/ns/net"]
    for directory in named_dirs:
        with suppress(OSError):
            candidates.extend(os.path.join(directory, n) for n in sorted(os.listdir(directory)))
    with suppress(OSError):
        candidates.extend(f"{proc}/{p}/ns/net" for p in os.listdir(proc) if p.isdigit())
    for path in candidates:
        inode = _netns_inode(path)
        if inode is not None and inode not in found:
            found[inode] = path
    return found


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
