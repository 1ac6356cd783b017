"""What a running process costs, read from /proc: resident size, open fds, stats holders."""

from __future__ import annotations

import contextlib
import os


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def gone(pid: int) -> bool:
    """``pid`` has exited (a zombie counts: it runs no more code)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "zombie" in f.read()
    except FileNotFoundError:
        return True


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def process_tree(pid: int) -> set[int]:
    """``pid`` and every descendant alive now."""
    tree = {pid}
    pending = [pid]
    while pending:
        current = pending.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{current}/task"):
                with (
                    contextlib.suppress(OSError),
                    open(f"/proc/{current}/task/{task}/children") as f,
                ):
                    for child in map(int, f.read().split()):
                        if child not in tree:
                            tree.add(child)
                            pending.append(child)
    return tree


def stats_holder_pids() -> set[int]:
    """Every process on the host that holds an ``anon_inode:bpf-stats`` fd now."""
    holders: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") == "anon_inode:bpf-stats":
                        holders.add(int(entry))
                        break
    return holders
