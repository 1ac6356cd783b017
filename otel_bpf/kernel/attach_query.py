"""Attach points made without a link: ``BPF_PROG_ATTACH`` and perf events.

Two sources of :mod:`otel_bpf.kernel.attach_discovery`:

* ``prog_attach`` (:class:`ProgAttachSource`): the objects ``BPF_PROG_ATTACH`` attaches to.
  Cgroup programs (what systemd, runc and older loaders use) are read in one pass by the
  ``iter/cgroup`` program of :mod:`otel_bpf.kernel.iterator.cgroups`, which tells programs
  from links exactly; where the kernel cannot load it (before 6.1, no vmlinux BTF), every
  cgroup2 directory is asked with ``BPF_PROG_QUERY``.  Network namespaces (flow_dissector)
  and sockmaps and sockhashes (sk_skb and sk_msg programs) are always queried.  A query
  lists link-attached programs too: those the ``links`` source already reported are left to
  it (a program attached both ways at one hook is listed once per attachment, so each is
  reported once).
* ``perf_event`` (:class:`PerfEventSource`): programs set on a perf event with
  ``PERF_EVENT_IOC_SET_BPF`` (kprobes, uprobes, tracepoints): every process's
  ``anon_inode:[perf_event]`` fd is asked about with ``BPF_TASK_FD_QUERY``.

Both cost nothing unless a program of a type they can find is loaded: a query is made only
for the attach types the loaded program types could use, each cgroup directory is opened
once (its fd serves every query and lists its children).

``sk_lookup`` programs are attached to a network namespace by link only (the kernel refuses
``BPF_PROG_ATTACH`` for them with EINVAL): the ``links`` source finds them all.  A program of
type ``perf_event`` set on a perf event cannot be identified: ``BPF_TASK_FD_QUERY`` answers
EOPNOTSUPP for that program type, and the event's fdinfo names no program.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from otel_bpf.kernel._uapi import (
    ATTACH_TYPE_NAMES,
    BPF_F_ALLOW_MULTI,
    BPF_F_ALLOW_OVERRIDE,
    Cmd,
    GetIdAttr,
    InfoByFdAttr,
    MapType,
    ProgQueryAttr,
    TaskFdQueryAttr,
    TaskFdType,
    u32,
)
from otel_bpf.kernel.attach import CGROUP_GONE, Names, cgroup_target
from otel_bpf.kernel.cgroup_tree import walk_cgroups
from otel_bpf.kernel.errors import BpfError, BpfPermissionError
from otel_bpf.kernel.namespaces import network_namespaces
from otel_bpf.kernel.owners import fd_targets, process_ids
from otel_bpf.kernel.syscall import close, command_error, prepared, raw_bpf
from otel_bpf.records import Attachment

if TYPE_CHECKING:
    from otel_bpf.kernel.attach_discovery import DiscoveryContext
    from otel_bpf.kernel.iterator.cgroups import CgroupIterator

log = logging.getLogger("otel_bpf.attach")

__all__ = [
    "CGROUP_ATTACH_TYPES",
    "NETNS_ATTACH_TYPES",
    "PERF_EVENT_PROG_TYPES",
    "SOCKMAP_ATTACH_TYPES",
    "PerfEventSource",
    "ProgAttachSource",
    "attach_flags_name",
    "attach_types_for",
    "decode_task_fd_query",
    "prog_attach_only",
]

# Program type (bpftool's name) -> the attach types BPF_PROG_ATTACH takes it at, from the
# kernel's attach_type_to_prog_type().
CGROUP_ATTACH_TYPES: dict[str, tuple[str, ...]] = {
    "cgroup_skb": ("cgroup_inet_ingress", "cgroup_inet_egress"),
    "cgroup_sock": (
        "cgroup_inet_sock_create",
        "cgroup_inet_sock_release",
        "cgroup_inet4_post_bind",
        "cgroup_inet6_post_bind",
    ),
    "cgroup_sock_addr": (
        "cgroup_inet4_bind",
        "cgroup_inet6_bind",
        "cgroup_inet4_connect",
        "cgroup_inet6_connect",
        "cgroup_unix_connect",
        "cgroup_inet4_getpeername",
        "cgroup_inet6_getpeername",
        "cgroup_unix_getpeername",
        "cgroup_inet4_getsockname",
        "cgroup_inet6_getsockname",
        "cgroup_unix_getsockname",
        "cgroup_udp4_sendmsg",
        "cgroup_udp6_sendmsg",
        "cgroup_unix_sendmsg",
        "cgroup_udp4_recvmsg",
        "cgroup_udp6_recvmsg",
        "cgroup_unix_recvmsg",
    ),
    "sock_ops": ("cgroup_sock_ops",),
    "cgroup_device": ("cgroup_device",),
    "cgroup_sysctl": ("cgroup_sysctl",),
    "cgroup_sockopt": ("cgroup_getsockopt", "cgroup_setsockopt"),
    # lsm programs are lsm_mac (a trampoline, found by link) or lsm_cgroup: the type name
    # does not tell which, so lsm_cgroup is queried whenever one is loaded.
    "lsm": ("lsm_cgroup",),
}
NETNS_ATTACH_TYPES: dict[str, tuple[str, ...]] = {"flow_dissector": ("flow_dissector",)}
SOCKMAP_ATTACH_TYPES: dict[str, tuple[str, ...]] = {
    "sk_skb": ("sk_skb_stream_parser", "sk_skb_stream_verdict", "sk_skb_verdict"),
    "sk_msg": ("sk_msg_verdict",),
}
PERF_EVENT_PROG_TYPES = frozenset({"kprobe", "tracepoint"})
"""Program types set on a perf event with ``PERF_EVENT_IOC_SET_BPF`` that
``BPF_TASK_FD_QUERY`` names (kprobes and uprobes are ``kprobe`` programs).  The
``perf_event`` type is set on perf events too, but the kernel never says which program of
that type an event has (EOPNOTSUPP): scanning every process's fds for it would find
nothing, so its being loaded does not start a scan."""

PERF_EVENT_FD_TARGET = "anon_inode:[perf_event]"
_LSM_CGROUP = ATTACH_TYPE_NAMES.index("lsm_cgroup")
_SOCK_MAP_TYPES = frozenset({MapType.SOCKMAP, MapType.SOCKHASH})
_IDS = 64  # a query's first buffer; a bigger one is asked for when the kernel says ENOSPC
_NAME_SIZE = 4096  # a uprobe's file may be a long path


def attach_types_for(
    programs: Mapping[int, str], table: Mapping[str, tuple[str, ...]]
) -> list[int]:
    """The attach types (numbers, in ``table``'s order, each once) that the loaded program
    types of ``programs`` could be attached at; empty when none is loaded."""
    loaded = set(programs.values())
    wanted = dict.fromkeys(
        name for prog_type, names in table.items() if prog_type in loaded for name in names
    )
    return [ATTACH_TYPE_NAMES.index(name) for name in wanted]


def attach_flags_name(flags: int) -> str | None:
    """``multi``, ``override`` or None (neither): how a cgroup takes programs at one attach
    type, as ``bpftool cgroup show`` names it."""
    if flags & BPF_F_ALLOW_MULTI:
        return "multi"
    if flags & BPF_F_ALLOW_OVERRIDE:
        return "override"
    return None


def prog_attach_only(
    queried: Iterable[tuple[int, Attachment]], found: Mapping[int, Iterable[Attachment]]
) -> dict[int, list[Attachment]]:
    """The attachments of ``queried`` that no link in ``found`` already reports.

    A query lists a program once per attachment at the hook, link or not: each link
    attachment of the same program, kind, target and attach type takes away one listing."""
    links = Counter(
        _hook(prog_id, a)
        for prog_id, attachments in found.items()
        for a in attachments
        if a.via == "link"
    )
    kept: dict[int, list[Attachment]] = {}
    for prog_id, attachment in queried:
        key = _hook(prog_id, attachment)
        if links[key] > 0:
            links[key] -= 1
            continue
        kept.setdefault(prog_id, []).append(attachment)
    return kept


def _hook(prog_id: int, a: Attachment) -> tuple[Any, ...]:
    return (prog_id, a.kind, a.attach_type, a.cgroup_id, a.netns, a.map_id)


class QueryError(OSError):
    """A ``BPF_PROG_QUERY`` failed for one target and attach type."""


class Querier:
    """``BPF_PROG_QUERY`` with one attr and buffer reused call after call (a discovery makes
    hundreds: one per cgroup and attach type)."""

    def __init__(self) -> None:
        self._attr = ProgQueryAttr()
        self._args = prepared(Cmd.PROG_QUERY, self._attr)
        self._size = 0
        self._grow(_IDS)

    def _grow(self, size: int) -> None:
        self._size = size
        self._ids = (u32 * size)()
        self._flags = (u32 * size)()
        self._attr.prog_ids = ctypes.addressof(self._ids)

    def __call__(self, target_fd: int, attach_type: int) -> tuple[list[int], int]:
        """``(program ids, attach flags)`` attached directly (not inherited) at
        ``attach_type`` of ``target_fd`` (a cgroup directory, a network namespace or a
        map)."""
        # Only the inputs are set: the kernel writes attach_flags and count back on every
        # answer.  A discovery may make thousands of these calls.
        attr = self._attr
        attr.target = target_fd
        attr.attach_type = attach_type
        # lsm_cgroup lists its programs only with their flags asked for as well.
        lsm = attach_type == _LSM_CGROUP
        attr.prog_attach_flags = ctypes.addressof(self._flags) if lsm else 0
        while True:
            attr.count = self._size
            ret = raw_bpf(self._args)
            if ret >= 0:
                count = attr.count
                if not count:
                    return [], 0
                return self._ids[: min(count, self._size)], int(attr.attach_flags)
            if ret == -errno.ENOSPC and self._size < attr.count:
                self._grow(attr.count)
                if lsm:
                    attr.prog_attach_flags = ctypes.addressof(self._flags)
                continue
            if -ret in (errno.EPERM, errno.EACCES):
                raise BpfPermissionError(-ret, "BPF_PROG_QUERY needs CAP_NET_ADMIN")
            raise QueryError(-ret, os.strerror(-ret))


class ProgAttachSource:
    """The ``prog_attach`` source: programs attached with ``BPF_PROG_ATTACH`` to cgroups,
    network namespaces and sockmaps."""

    name = "prog_attach"

    def __init__(self, *, iterator: bool = True) -> None:
        # Attach types this kernel does not know (EINVAL): not asked again.
        self._unknown: set[int] = set()
        # Map id -> whether it is a sockmap or sockhash: a map's type never changes.
        self._sock_maps: dict[int, bool] = {}
        # Cgroup id -> (its directory, its target and fields): parsing a path for its
        # container and pod is dearer than the query.
        self._cgroup_targets: dict[int, tuple[str, tuple[str, dict[str, Any]]]] = {}
        self._querier = Querier()
        self._errors: list[str] = []
        self._use_iterator = iterator
        self._iterator: CgroupIterator | None = None
        # The iterator's last output, what it gave, and each (cgroup id, slot, flags)'s
        # attachment.
        self._raw: bytes | None = None
        self._iterated: dict[int, list[Attachment]] = {}
        self._attachments: dict[tuple[int, int, int], Attachment] = {}
        self.queries = 0
        """How many BPF_PROG_QUERY calls the last read made (tests and benchmarks read it)."""
        self.iterated = False
        """Whether the last read found the cgroup programs with the iterator."""

    def read(self, ctx: DiscoveryContext) -> dict[int, list[Attachment]]:
        self.queries = 0
        self.iterated = False
        self._errors = ctx.errors
        queried: list[tuple[int, Attachment]] = []
        direct: dict[int, list[Attachment]] = {}
        cgroup_types = self._known(attach_types_for(ctx.programs, CGROUP_ATTACH_TYPES))
        if cgroup_types:
            raw = self._iterate(ctx.names.cgroup_root)
            if raw is None:
                queried.extend(self._cgroups(ctx, cgroup_types))
            else:
                direct = self._iterated_cgroups(ctx, raw)
                self.iterated = True
        netns_types = self._known(attach_types_for(ctx.programs, NETNS_ATTACH_TYPES))
        if netns_types:
            queried.extend(self._namespaces(netns_types))
        map_types = self._known(attach_types_for(ctx.programs, SOCKMAP_ATTACH_TYPES))
        if map_types:
            queried.extend(self._sockmaps(ctx, map_types))
        if not queried:
            return direct
        found = prog_attach_only(queried, ctx.found)
        if not direct:
            return found
        merged = {prog_id: list(attachments) for prog_id, attachments in direct.items()}
        for prog_id, attachments in found.items():
            merged.setdefault(prog_id, []).extend(attachments)
        return merged

    def own_programs(self) -> tuple[int, ...]:
        """The id of the ``iter/cgroup`` program, once loaded."""
        it = self._iterator
        return () if it is None else (it.prog_id,)

    def close(self) -> None:
        """Unload the ``iter/cgroup`` program."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
        self._raw, self._iterated, self._attachments = None, {}, {}

    def _iterate(self, root: str) -> bytes | None:
        """The iterator's output for the hierarchy at ``root``; None when the query walk is
        to be made instead (no iterator on this kernel, or this read failed)."""
        if not self._use_iterator:
            return None
        if self._iterator is not None and self._iterator.root != root:
            self.close()
        if self._iterator is None:
            from otel_bpf.kernel.iterator.cgroups import CgroupIterator

            try:
                self._iterator = CgroupIterator.open(root)
            except (BpfError, OSError) as err:
                self._use_iterator = False
                log.info(
                    "cgroup programs are found by querying every cgroup"
                    " (no iter/cgroup program: %s)",
                    err,
                )
                return None
        try:
            return self._iterator.read_raw()
        except (BpfError, OSError) as err:
            # EOPNOTSUPP: the pass did not fit one read (the cgroup iterator cannot resume).
            log.debug("iter/cgroup read failed, the cgroups are queried instead: %s", err)
            return None

    def _iterated_cgroups(self, ctx: DiscoveryContext, raw: bytes) -> dict[int, list[Attachment]]:
        """The attachments the iterator's output stands for: every record is a program
        attached with ``BPF_PROG_ATTACH`` (the iterator leaves links out), so none is
        subtracted.

        Attachments mostly stay from one discovery to the next: an output equal to the last
        one gives the last result (not to be changed by the caller), and each (cgroup,
        slot, flags) keeps its attachment, the same for every program there."""
        if raw == self._raw:
            return self._iterated
        from otel_bpf.kernel.iterator.cgroups import decode

        assert self._iterator is not None
        names = self._iterator.layout.slot_names
        root = ctx.names.cgroup_root
        targets: dict[int, tuple[str, tuple[str, dict[str, Any]]]] = {}
        made: dict[tuple[int, int, int], Attachment] = {}
        found: dict[int, list[Attachment]] = {}
        complete = True
        for cgroup_id, prog_id, slot, flags in decode(raw):
            key = (cgroup_id, slot, flags)
            attachment = made.get(key) or self._attachments.get(key)
            if attachment is None:
                known = targets.get(cgroup_id) or self._cgroup_targets.get(cgroup_id)
                if known is None:
                    path = ctx.names.cgroup_by_id(cgroup_id)
                    if path is CGROUP_GONE:
                        continue  # removed since the pass
                    if path is None:
                        complete = False  # not kept: asked again next time
                        target = cgroup_target(cgroup_id, ctx.names)
                    else:
                        walked = _WalkedCgroup(root, cgroup_id, path)
                        known = (path, cgroup_target(cgroup_id, walked))
                if known is not None:
                    targets[cgroup_id] = known
                    target = known[1]
                attach_type = names[slot] if slot < len(names) else f"cgroup_slot_{slot}"
                attachment = Attachment(
                    "cgroup", "prog_attach", None, attach_type, target[0],
                    attach_flags=attach_flags_name(flags), **target[1],
                )  # fmt: skip
            elif cgroup_id in self._cgroup_targets:
                targets.setdefault(cgroup_id, self._cgroup_targets[cgroup_id])
            made[key] = attachment
            found.setdefault(prog_id, []).append(attachment)
        self._cgroup_targets = targets
        self._attachments = made
        self._raw, self._iterated = (raw if complete else None), found
        return found

    def _known(self, attach_types: list[int]) -> list[int]:
        return [t for t in attach_types if t not in self._unknown]

    def _query(self, target_fd: int, attach_type: int) -> tuple[list[int], int]:
        self.queries += 1
        try:
            return self._querier(target_fd, attach_type)
        except QueryError as err:
            if err.errno == errno.EINVAL:
                self._unknown.add(attach_type)
            elif err.errno not in (errno.ENOENT, errno.EBADF, errno.EBUSY):
                # A target that went away since it was listed is not worth a line, nor is
                # EBUSY: a sockmap asked for its stream verdict program while it has an
                # sk_skb_verdict one (or the other way round), which excludes it.
                name = ATTACH_TYPE_NAMES[attach_type]
                self._errors.append(f"BPF_PROG_QUERY {name}: {err.strerror}")
            return [], 0

    def _cgroups(
        self, ctx: DiscoveryContext, attach_types: list[int]
    ) -> Iterator[tuple[int, Attachment]]:
        targets: dict[int, tuple[str, tuple[str, dict[str, Any]]]] = {}
        for fd, cgroup_id, path in walk_cgroups(ctx.names.cgroup_root):
            for attach_type in attach_types:
                ids, flags = self._query(fd, attach_type)
                if not ids:
                    continue
                known = targets.get(cgroup_id) or self._cgroup_targets.get(cgroup_id)
                if known is None or known[0] != path:
                    walked = _WalkedCgroup(ctx.names.cgroup_root, cgroup_id, path)
                    known = (path, cgroup_target(cgroup_id, walked))
                targets[cgroup_id] = known
                target, fields = known[1]
                for prog_id in ids:
                    yield prog_id, Attachment(
                        "cgroup", "prog_attach", None, ATTACH_TYPE_NAMES[attach_type],
                        target, attach_flags=attach_flags_name(flags), **fields,
                    )  # fmt: skip
        self._cgroup_targets = targets

    def _namespaces(self, attach_types: list[int]) -> Iterator[tuple[int, Attachment]]:
        for inode, path in network_namespaces().items():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # the process holding it exited
            try:
                for attach_type in attach_types:
                    for prog_id in self._query(fd, attach_type)[0]:
                        yield prog_id, Attachment(
                            "netns", "prog_attach", None, ATTACH_TYPE_NAMES[attach_type],
                            f"net:[{inode}]", netns=inode,
                        )  # fmt: skip
            finally:
                os.close(fd)

    def _sockmaps(
        self, ctx: DiscoveryContext, attach_types: list[int]
    ) -> Iterator[tuple[int, Attachment]]:
        seen: dict[int, bool] = {}
        for map_id in _map_ids():
            is_sock = self._sock_maps.get(map_id)
            fd = -1
            if is_sock is None:
                fd, map_type = _open_map(map_id)
                is_sock = map_type in _SOCK_MAP_TYPES
            seen[map_id] = is_sock
            if not is_sock:
                if fd >= 0:
                    close(fd)
                continue
            if fd < 0:
                fd = _open_map(map_id)[0]
                if fd < 0:
                    continue  # gone since
            try:
                for attach_type in attach_types:
                    for prog_id in self._query(fd, attach_type)[0]:
                        yield prog_id, Attachment(
                            "sockmap", "prog_attach", None, ATTACH_TYPE_NAMES[attach_type],
                            f"map {map_id}", map_id=map_id,
                        )  # fmt: skip
            finally:
                close(fd)
        self._sock_maps = seen


class _WalkedCgroup(Names):
    """The path of the one cgroup the walk is at, for :func:`cgroup_target`: asking the
    shared :class:`Names` would rescan the whole hierarchy for a cgroup made since its last
    scan (a new container), and the walk has just read the path."""

    def __init__(self, root: str, cgroup_id: int, path: str) -> None:
        super().__init__(cgroup_root=root)
        self._id, self._path = cgroup_id, path

    def cgroup_path(self, cgroup_id: int) -> str | None:
        return self._path if cgroup_id == self._id else None


def _map_ids() -> Iterator[int]:
    attr = GetIdAttr()
    args = prepared(Cmd.MAP_GET_NEXT_ID, attr)
    while True:
        if (ret := raw_bpf(args)) < 0:
            if -ret == errno.ENOENT:
                return
            raise command_error(-ret, Cmd.MAP_GET_NEXT_ID)
        attr.start_id = attr.next_id
        attr.next_id = 0
        yield attr.start_id


def _open_map(map_id: int) -> tuple[int, int]:
    """``(fd, map type)`` of map ``map_id``; ``(-1, 0)`` when it is gone."""
    fd = raw_bpf(prepared(Cmd.MAP_GET_FD_BY_ID, GetIdAttr(start_id=map_id)))
    if fd < 0:
        return -1, 0
    map_type = u32()  # the type is the first field of bpf_map_info: only it is asked for
    attr = InfoByFdAttr(bpf_fd=fd, info_len=4, info=ctypes.addressof(map_type))
    if raw_bpf(prepared(Cmd.OBJ_GET_INFO_BY_FD, attr)) < 0:
        close(fd)
        return -1, 0
    return fd, int(map_type.value)


_FD_TYPE_KIND: dict[int, str] = {
    TaskFdType.RAW_TRACEPOINT: "raw_tracepoint",
    TaskFdType.TRACEPOINT: "tracepoint",
    TaskFdType.KPROBE: "kprobe",
    TaskFdType.KRETPROBE: "kprobe",
    TaskFdType.UPROBE: "uprobe",
    TaskFdType.URETPROBE: "uprobe",
}


def decode_task_fd_query(
    pid: int, fd: int, fd_type: int, name: bytes, probe_offset: int, probe_addr: int
) -> Attachment:
    """The attachment a ``BPF_TASK_FD_QUERY`` answer describes, its target written as the
    link decoder writes a perf_event link's (:mod:`otel_bpf.kernel.attach`)."""
    end = name.find(b"\0")
    text = (name if end < 0 else name[:end]).decode(errors="replace")
    kind = _FD_TYPE_KIND.get(fd_type, "perf_event")
    if fd_type in (TaskFdType.KPROBE, TaskFdType.KRETPROBE):
        ret = "kretprobe" if fd_type == TaskFdType.KRETPROBE else "kprobe"
        where = text or (f"{probe_addr:#x}" if probe_addr else "?")
        target = f"{ret} {where}{f'+{probe_offset:#x}' if probe_offset else ''}"
    elif fd_type in (TaskFdType.UPROBE, TaskFdType.URETPROBE):
        ret = "uretprobe" if fd_type == TaskFdType.URETPROBE else "uprobe"
        target = f"{ret} {text or '?'}+{probe_offset:#x}"
    elif fd_type in (TaskFdType.TRACEPOINT, TaskFdType.RAW_TRACEPOINT):
        target = text
    else:
        target = f"fd type {fd_type}"
    return Attachment(kind, "perf_event", None, None, target, pid=pid, fd=fd)


def task_fd_query(pid: int, fd: int) -> tuple[int, Attachment] | None:
    """``(program id, attachment)`` of the program set on perf event ``fd`` of process
    ``pid``; None when none is (or it is a ``perf_event`` program, which the kernel does not
    name: EOPNOTSUPP), or the fd is gone."""
    name = ctypes.create_string_buffer(_NAME_SIZE)
    attr = TaskFdQueryAttr(pid=pid, fd=fd, buf_len=_NAME_SIZE, buf=ctypes.addressof(name))
    ret = raw_bpf(prepared(Cmd.TASK_FD_QUERY, attr))
    if ret < 0:
        if -ret in (errno.EPERM, errno.EACCES):
            raise BpfPermissionError(-ret, "BPF_TASK_FD_QUERY needs CAP_SYS_ADMIN")
        return None
    attachment = decode_task_fd_query(
        pid, fd, attr.fd_type, name.raw, attr.probe_offset, attr.probe_addr
    )
    return int(attr.prog_id), attachment


class PerfEventSource:
    """The ``perf_event`` source: programs set on perf events with
    ``PERF_EVENT_IOC_SET_BPF``, by the process and fd holding the event."""

    name = "perf_event"

    def __init__(self) -> None:
        self.queries = 0
        """How many BPF_TASK_FD_QUERY calls the last read made (tests read it)."""

    def read(self, ctx: DiscoveryContext) -> dict[int, list[Attachment]]:
        self.queries = 0
        # Programs a link already holds are found: scanning every process's fds is the
        # dearest read there is, made only while a program may be attached this way.
        wanted = {
            prog_id
            for prog_id, prog_type in ctx.programs.items()
            if prog_type in PERF_EVENT_PROG_TYPES and not ctx.found.get(prog_id)
        }
        found: dict[int, list[Attachment]] = {}
        if not wanted:
            return found
        for pid in process_ids():
            for fd, target in fd_targets(pid):
                if target != PERF_EVENT_FD_TARGET:
                    continue
                self.queries += 1
                answer = task_fd_query(pid, int(fd))
                if answer is not None and answer[0] in wanted:
                    found.setdefault(answer[0], []).append(answer[1])
        return found
