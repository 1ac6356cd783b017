"""The cgroup2 hierarchy, walked directory by directory: each cgroup's id and path.

A cgroup's id is its kernfs node id, which is its directory's inode number: the id link
info, ``BPF_PROG_QUERY`` answers and the cgroup iterator give is found by walking the tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = ["DIR_FLAGS", "walk_cgroups"]

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def walk_cgroups(root: str) -> Iterator[tuple[int, int, str]]:
    """``(open directory fd, cgroup id, path)`` of every cgroup under ``root`` (itself
    first); each fd is closed when the next is asked for.  The id is the directory's inode;
    a directory removed meanwhile is skipped.

    Each child is opened relative to its parent's fd (one path component to look up), so
    the parents of the directory being read stay open: as many fds as the tree is deep."""
    fd = os.open(root, DIR_FLAGS)
    try:
        yield from _walk_below(fd, root)
    finally:
        os.close(fd)


def _walk_below(fd: int, path: str) -> Iterator[tuple[int, int, str]]:
    st = os.fstat(fd)
    yield fd, st.st_ino, path
    for name in _children(fd, st.st_nlink):
        try:
            child = os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError:
            continue  # removed since listed
        try:
            yield from _walk_below(child, f"{path}/{name}")
        finally:
            os.close(child)


# A cgroup2 directory's files are named <controller>.<file> (cgroup.procs, memory.max, ...);
# its subdirectories, the child cgroups, may be named anything.
_CONTROL_PREFIXES = frozenset(
    {"cgroup", "cpu", "cpuset", "io", "memory", "pids", "rdma", "hugetlb", "misc", "dmem", "irq"}
)


def _children(fd: int, nlink: int) -> list[str]:
    """The names of the child cgroups of directory ``fd``, whose link count is ``nlink``.

    A kernfs directory's link count is 2 plus its subdirectories: a leaf (most cgroups) is
    not listed at all.  A listing of names is several times cheaper than one that tells
    files from directories; the files are told by their controller prefix, and when that
    guess does not account for every subdirectory (a controller this list does not know, a
    child named like a file) the directory is listed again with the entries' types."""
    if nlink <= 2:
        return []
    try:
        names = [
            name
            for name in os.listdir(fd)
            if "." not in name or name.partition(".")[0] not in _CONTROL_PREFIXES
        ]
        if len(names) == nlink - 2:
            return names
        with os.scandir(fd) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []  # removed while listed
