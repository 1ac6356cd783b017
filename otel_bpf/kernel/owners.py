"""Which processes hold each program: one :class:`Owner` per process, on both sampling paths.

A process owns a program through a program fd (``anon_inode:bpf-prog``) or through a BPF
link fd (``anon_inode:bpf_link``, whose fdinfo names the linked ``prog_id`` since 5.8), and
often through both: libbpf keeps the program fd of every program it attaches with a link.
Both paths first list each process's program and link fds as :class:`TaskFds` (the syscall
path with a scan of ``/proc/<pid>/fd`` here, the iterator path with ``iter/task_file``);
:func:`group_by_program` then turns them into owners, one per process with every way it
holds the program in ``via``, so the two paths cannot disagree on that.

Threads share their thread group's fd table, so only thread-group leaders (the numeric
entries of ``/proc``) are scanned. Processes exit while we read them; every such race just
drops that process or fd. A program held by nobody (pinned, or attached without a process
fd) gets no owner.

Each owner also carries its process's :class:`~otel_bpf.records.Workload`: the cgroup from
``/proc/<pid>/cgroup`` (read once per process per pass, so a moved process or a reused pid
is seen at the next pass) and the container and pod its path names
(:mod:`otel_bpf.workload`).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from otel_bpf.kernel.fdinfo import prog_id_from_fdinfo
from otel_bpf.records import UNKNOWN_WORKLOAD, Owner, Workload
from otel_bpf.workload import parse_proc_cgroup

PROG_FD_TARGET = "anon_inode:bpf-prog"
LINK_FD_TARGET = "anon_inode:bpf_link"
STATS_FD_TARGET = "anon_inode:bpf-stats"

_VIA = {PROG_FD_TARGET: "prog", LINK_FD_TARGET: "link"}

# The ways a process holds a program, as bits, and the ``Owner.via`` of each combination
# (sorted names, no duplicates).
HELD_BY_LINK, HELD_BY_PROG = 1, 2
VIA_OF_WAYS: dict[int, tuple[str, ...]] = {
    HELD_BY_LINK: ("link",),
    HELD_BY_PROG: ("prog",),
    HELD_BY_LINK | HELD_BY_PROG: ("link", "prog"),
}
_WAYS_OF_VIA = {via: ways for ways, via in VIA_OF_WAYS.items()}


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


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""  # the process exited


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


_CGROUP_READ_SIZE = 65536
"""Bytes per read of ``/proc/<pid>/cgroup``: one read holds the file on any usual host (a
path is at most PATH_MAX, one line per hierarchy); a longer file takes more reads."""


def read_cgroup(pid: int) -> str | None:
    """``/proc/<pid>/cgroup``; None when the process is gone or the file cannot be read."""
    try:
        fd = os.open(f"/proc/{pid}/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = [os.read(fd, _CGROUP_READ_SIZE)]
        while len(chunks[-1]) == _CGROUP_READ_SIZE:
            chunks.append(os.read(fd, _CGROUP_READ_SIZE))
    except OSError:
        return None  # the process exited between open and read (ESRCH)
    finally:
        os.close(fd)
    # Cgroup names are bytes; decoded like comm (U+FFFD for bad bytes).
    return b"".join(chunks).decode("utf-8", errors="replace")


def process_workload(pid: int) -> Workload:
    """The cgroup of ``pid`` and the container and pod its path names; every field None
    when the process is gone."""
    text = read_cgroup(pid)
    return UNKNOWN_WORKLOAD if text is None else parse_proc_cgroup(text)


@dataclass(slots=True)
class TaskFds:
    """The program and link fds of one process, as one pass found them (the ``iter/task_file``
    walk may report a process twice: a thread with a file table of its own)."""

    tgid: int
    comm: bytes  # as the kernel keeps it: at most 16 bytes, NUL padded from the iterator
    prog_ids: array[int] = field(default_factory=lambda: array("I"))  # one per program fd
    link_ids: list[int] = field(default_factory=list)  # one per link fd

    @property
    def name(self) -> str:
        """``comm`` as text, like /proc/<pid>/comm."""
        return self.comm.split(b"\0", 1)[0].decode(errors="replace")


OwnerKey = tuple[int, int, bytes]
"""(tgid, ways held as ``HELD_BY_*`` bits, comm) of one owner."""


class _OwnerTable:
    """The :class:`Owner` of each (process, ways held, comm) in one grouping, reusing those
    of the previous pass; the executable is read once per new process, the cgroup once per
    process per pass (a process can be moved to another cgroup at any time, and a pid
    reused by a process of the same name may run elsewhere)."""

    def __init__(self, previous: dict[OwnerKey, Owner]) -> None:
        self.old = previous
        self.new: dict[OwnerKey, Owner] = {}
        self._exes: dict[int, str] = {}
        self._workloads: dict[int, Workload] = {}

    def get(self, task: TaskFds, ways: int) -> Owner:
        key = (task.tgid, ways, task.comm)
        owner = self.new.get(key)
        if owner is not None:
            return owner
        workload = self._workloads.get(task.tgid)
        if workload is None:
            workload = self._workloads[task.tgid] = process_workload(task.tgid)
        owner = self.old.get(key)
        if owner is None or owner.workload != workload:
            if task.tgid not in self._exes:
                self._exes[task.tgid] = process_executable(task.tgid)
            owner = Owner(task.tgid, task.name, self._exes[task.tgid], VIA_OF_WAYS[ways], workload)
        self.new[key] = owner
        return owner


def _held_by_task(task: TaskFds, table: _OwnerTable) -> dict[int, tuple[Owner, ...]]:
    """Program id -> ``(owner,)`` for one task: one owner per way of holding, shared by
    all the programs the task holds that way."""
    held: dict[int, tuple[Owner, ...]] = {}
    by_prog: tuple[Owner, ...] | None = None
    if task.prog_ids:
        by_prog = (table.get(task, HELD_BY_PROG),)
        held = dict.fromkeys(task.prog_ids, by_prog)
    by_link: tuple[Owner, ...] | None = None
    both: tuple[Owner, ...] | None = None
    for prog_id in task.link_ids:
        already = held.get(prog_id)
        if already is None:
            by_link = by_link or (table.get(task, HELD_BY_LINK),)
            held[prog_id] = by_link
        elif already is by_prog:
            both = both or (table.get(task, HELD_BY_LINK | HELD_BY_PROG),)
            held[prog_id] = both
    return held


def _add_holder(
    held: tuple[Owner, ...], owner: Owner, task: TaskFds, table: _OwnerTable
) -> tuple[Owner, ...]:
    """``held`` (sorted by pid, one entry per process) with ``owner`` of ``task`` added; a
    process already there gets ``owner``'s ways added to its ``via``."""
    for i, o in enumerate(held):
        if o.pid == owner.pid:
            ways = _WAYS_OF_VIA[o.via] | _WAYS_OF_VIA[owner.via]
            if ways == _WAYS_OF_VIA[o.via]:
                return held
            return (*held[:i], table.get(task, ways), *held[i + 1 :])
    return tuple(sorted((*held, owner), key=_pid))


def _pid(owner: Owner) -> int:
    return owner.pid


def group_by_program(
    tasks: Sequence[TaskFds], cache: dict[OwnerKey, Owner] | None = None
) -> tuple[dict[int, tuple[Owner, ...]], dict[OwnerKey, Owner]]:
    """Program id -> its holders, one :class:`Owner` per process sorted by pid, with every
    way the process holds the program in ``via`` (``("link", "prog")`` for both).

    Runs every pass, so each task's ids go into the result in bulk (one shared tuple for
    all the programs a task holds the same way); only ids that another task holds too are
    merged one by one.  The :class:`Owner` of a (pid, ways held, comm) seen in the previous
    pass is reused (``cache``).  Returns the grouping and the cache for the next pass.
    """
    table = _OwnerTable(cache or {})
    result: dict[int, tuple[Owner, ...]] = {}
    for task in tasks:
        by_this = _held_by_task(task, table)
        for prog_id in by_this.keys() & result.keys():
            by_this[prog_id] = _add_holder(result.pop(prog_id), by_this[prog_id][0], task, table)
        # The smaller dict is copied into the larger (order does not matter).
        if len(by_this) > len(result):
            result, by_this = by_this, result
        result.update(by_this)
    return result, table.new


def scan_fds() -> list[TaskFds]:
    """The program and link fds of every process holding one, from ``/proc/<pid>/fd``."""
    tasks: list[TaskFds] = []
    for pid in process_ids():
        task: TaskFds | None = None
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
            if task is None:
                task = TaskFds(pid, b"")
                tasks.append(task)
            if via == "link":
                task.link_ids.append(prog_id)
            else:
                task.prog_ids.append(prog_id)
    for task in tasks:
        task.comm = _read_bytes(f"/proc/{task.tgid}/comm").removesuffix(b"\n")
    return tasks


def scan_owners() -> dict[int, tuple[Owner, ...]]:
    """Program id -> the processes holding it, from a scan of ``/proc`` (see
    :func:`group_by_program`)."""
    return group_by_program(scan_fds())[0]


def iter_stats_holders(exclude_pid: int | None = None) -> Iterator[int]:
    """Pids of processes holding an ``anon_inode:bpf-stats`` fd (BPF_ENABLE_STATS), lazily."""
    for pid in process_ids():
        if pid != exclude_pid and any(t == STATS_FD_TARGET for _, t in fd_targets(pid)):
            yield pid


def stats_holders(exclude_pid: int | None = None) -> list[int]:
    """Pids of processes holding an ``anon_inode:bpf-stats`` fd (BPF_ENABLE_STATS)."""
    return list(iter_stats_holders(exclude_pid))
