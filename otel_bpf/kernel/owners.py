"""Which processes hold each program: a scan of ``/proc/<pid>/fd``.

A process owns a program through a program fd (``anon_inode:bpf-prog``) or through a BPF
link fd (``anon_inode:bpf_link``, whose fdinfo names the linked ``prog_id`` since 5.8).
Threads share their thread group's fd table, so only thread-group leaders (the numeric
entries of ``/proc``) are scanned. Processes exit while we read them; every such race just
drops that process or fd. A program held by nobody (pinned, or attached without a process
fd) gets no owner.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from otel_bpf.kernel.fdinfo import prog_id_from_fdinfo
from otel_bpf.records import Owner

PROG_FD_TARGET = "anon_inode:bpf-prog"
LINK_FD_TARGET = "anon_inode:bpf_link"
STATS_FD_TARGET = "anon_inode:bpf-stats"

_VIA = {PROG_FD_TARGET: "prog", LINK_FD_TARGET: "link"}


def via_of_fd_target(target: str) -> str | None:
    """``"prog"``/``"link"`` for a BPF program/link fd's readlink text, else None."""
    return _VIA.get(target)


def parse_comm(text: str) -> str:
    """``/proc/<pid>/comm`` without its trailing newline."""
    return text[:-1] if text.endswith("\n") else text


def process_ids() -> Iterator[int]:
    """Thread-group ids of the processes now in ``/proc``."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def fd_targets(pid: int) -> Iterator[tuple[str, str]]:
    """``(fd, readlink target)`` of each open fd of ``pid``; nothing when it is gone."""
    base = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(base)
    except OSError:
        return
    for fd in fds:
        target = _readlink(f"{base}/{fd}")
        if target is not None:
            yield fd, target


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None  # the fd was closed or the process exited since listdir


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def process_comm(pid: int) -> str:
    """``comm`` of ``pid``; empty when the process is gone."""
    text = _read_text(f"/proc/{pid}/comm")
    return parse_comm(text) if text is not None else ""


def process_executable(pid: int) -> str:
    """Base name of ``/proc/<pid>/exe``; empty for kernel threads, exited processes or EACCES."""
    try:
        target = os.readlink(f"/proc/{pid}/exe".encode())
    except OSError:
        return ""
    target = target.removesuffix(b" (deleted)")
    # A file name need not be UTF-8. Decoded like comm (U+FFFD for bad bytes): the default
    # surrogateescape would leave lone surrogates that UTF-8 encoders refuse (the OTLP
    # protobuf encoding of a whole batch, strict JSON parsers).
    return os.path.basename(target).decode("utf-8", errors="replace")


def scan_owners() -> dict[int, tuple[Owner, ...]]:
    """Program id -> the processes holding it, sorted by (pid, via), one entry per way held."""
    found: dict[int, set[tuple[int, str]]] = {}
    for pid in process_ids():
        for fd, target in fd_targets(pid):
            via = _VIA.get(target)
            if via is None:
                continue
            text = _read_text(f"/proc/{pid}/fdinfo/{fd}")
            if text is None:
                continue
            prog_id = prog_id_from_fdinfo(text)
            if prog_id is None:
                continue
            found.setdefault(prog_id, set()).add((pid, via))
    names: dict[int, tuple[str, str]] = {}
    result: dict[int, tuple[Owner, ...]] = {}
    for prog_id, holders in found.items():
        owners = []
        for pid, via in sorted(holders):
            if pid not in names:
                names[pid] = (process_comm(pid), process_executable(pid))
            comm, exe = names[pid]
            owners.append(Owner(pid=pid, comm=comm, executable=exe, via=via))
        result[prog_id] = tuple(owners)
    return result


def iter_stats_holders(exclude_pid: int | None = None) -> Iterator[int]:
    """Pids of processes holding an ``anon_inode:bpf-stats`` fd (BPF_ENABLE_STATS), lazily."""
    for pid in process_ids():
        if pid != exclude_pid and any(t == STATS_FD_TARGET for _, t in fd_targets(pid)):
            yield pid


def stats_holders(exclude_pid: int | None = None) -> list[int]:
    """Pids of processes holding an ``anon_inode:bpf-stats`` fd (BPF_ENABLE_STATS)."""
    return list(iter_stats_holders(exclude_pid))
