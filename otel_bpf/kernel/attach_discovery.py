"""Every program's attach points, from each source the kernel offers, on their own cadence.

A program can be attached in several ways, and each is found by its own read, in this
order (:func:`default_sources`):

* ``links``: the BPF links (:mod:`otel_bpf.kernel.attach`), every link type;
* ``prog_attach``: ``BPF_PROG_QUERY`` or an ``iter/cgroup`` program for cgroups, queries on
  network namespaces and sockmaps, and ``perf_event``: ``BPF_TASK_FD_QUERY`` on processes'
  perf events (:mod:`otel_bpf.kernel.attach_query`);
* ``sockets``: socket filters and reuseport programs on processes' sockets
  (:mod:`otel_bpf.kernel.attach_sockets`);
* ``netlink``: legacy XDP and tc ``cls_bpf``/``act_bpf`` programs in every network namespace
  (:mod:`otel_bpf.kernel.attach_netlink`), last: its visits of the namespaces start with the
  discovery, in a thread of their own, and wait on the kernel's replies while the other
  sources run.

Each sees what the earlier ones found (:class:`DiscoveryContext`), so that a source
reporting the same hook a link holds (a device's XDP information lists a link's program
too) can leave it to the link.

Discovery is dearer than a pass (a syscall or more per link, cgroup and device), so
:class:`AttachmentDiscovery` runs it at most every ``interval`` seconds, and at once when the
set of programs changes; the per-second pass reads its last result.  A source that fails
(a missing privilege, a namespace it may not enter) is left out with one log line, and the
other sources still report.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from otel_bpf.kernel.attach import DISCOVERY_INTERVAL, LinkWalk, Names
from otel_bpf.kernel.attach_netlink import netlink_attachments
from otel_bpf.kernel.attach_query import PerfEventSource, ProgAttachSource
from otel_bpf.kernel.attach_sockets import SocketSource
from otel_bpf.kernel.errors import BpfError
from otel_bpf.records import Attachment

__all__ = [
    "AttachmentDiscovery",
    "DiscoveryContext",
    "Source",
    "default_sources",
]

log = logging.getLogger("otel_bpf.attach")

Clock = Callable[[], float]


@dataclass
class DiscoveryContext:
    """What a source is given: the name look-ups, the programs of the pass and what the
    sources before it found."""

    names: Names
    programs: Mapping[int, str]
    """Program id -> type (bpftool's name: ``cgroup_skb``, ``sched_cls``, ...), so a source
    can skip the hooks no loaded program could be attached to."""
    found: dict[int, list[Attachment]] = field(default_factory=dict)
    """Program id -> attachments the earlier sources reported (the links come first)."""
    errors: list[str] = field(default_factory=list)
    """Failures of single objects (a link or device that went wrong); the source goes on."""


@dataclass(frozen=True)
class Source:
    """One way of finding attachments."""

    name: str
    """Short and stable (``links``, ``netlink``, ...): it names the source in log lines."""
    read: Callable[[DiscoveryContext], Mapping[int, Iterable[Attachment]]]
    """Program id -> the attachments this source found.  Raises ``OSError`` or
    :class:`~otel_bpf.kernel.errors.BpfError` when the source cannot be read at all."""
    close: Callable[[], None] | None = None
    """Releases what the source keeps between reads (a loaded iterator program)."""
    own_programs: Callable[[], Iterable[int]] | None = None
    """Ids of the programs the source loaded itself, which the passes leave out like the
    iterator path's own (unless ``SourceOptions.include_self``)."""


class _Links:
    """The BPF links, through a :class:`~otel_bpf.kernel.attach.LinkWalk` kept between runs
    (only new or changed links cost syscalls)."""

    def __init__(self) -> None:
        self.walk = LinkWalk()

    def __call__(self, ctx: DiscoveryContext) -> Mapping[int, Iterable[Attachment]]:
        return self.walk.read(ctx.names, ctx.errors)

    def own_programs(self) -> frozenset[int]:
        return self.walk.prog_ids

    def close(self) -> None:
        self.walk.close()


_NETLINK_TYPES = frozenset({"xdp", "sched_cls", "sched_act"})
"""Program types that can be attached through netlink (XDP, tc)."""


def _netlink(ctx: DiscoveryContext) -> Mapping[int, Iterable[Attachment]]:
    if not _NETLINK_TYPES.intersection(ctx.programs.values()):
        return {}  # nothing loaded could be attached there
    scans = ctx.names.namespace_scans().values()
    return netlink_attachments(scans, ctx.found)


def default_sources() -> list[Source]:
    """The sources a discovery uses unless told otherwise, in the order they run.  Each
    call makes new ones: a source may keep state between runs (closed with the discovery)."""
    links = _Links()
    sockets = SocketSource()
    prog_attach = ProgAttachSource()
    return [
        Source("links", links, links.close, links.own_programs),
        Source(prog_attach.name, prog_attach.read, prog_attach.close, prog_attach.own_programs),
        Source(PerfEventSource.name, PerfEventSource().read),
        Source("sockets", sockets.read, sockets.close, sockets.own_programs),
        # Last: its namespace visits, started with the discovery, ran beside the others.
        Source("netlink", _netlink),
    ]


class AttachmentDiscovery:
    """The attachments of every program, re-read on their own cadence.

    :meth:`get` runs every source at most every ``interval`` seconds, and at once when the
    set of program ids differs from the last run's (a program loaded or unloaded is usually
    one attached or detached).  Between runs it returns the last result: the per-second pass
    never pays for discovery.
    """

    def __init__(
        self,
        interval: float = DISCOVERY_INTERVAL,
        *,
        sources: Sequence[Source] | None = None,
        clock: Clock = time.monotonic,
        names: Names | None = None,
    ) -> None:
        self._interval = interval
        self._sources = list(default_sources() if sources is None else sources)
        self._clock = clock
        self._names = names or Names()
        self._lock = threading.Lock()
        self._at: float | None = None
        self._prog_ids: frozenset[int] = frozenset()
        self._found: dict[int, tuple[Attachment, ...]] = {}
        # Each source's last result, kept when a later run of it fails.
        self._last: dict[str, dict[int, Sequence[Attachment]]] = {}
        self._failing: set[str] = set()
        self.walks = 0
        """How many discoveries were made (tests and benchmarks read it)."""

    def get(
        self, programs: Mapping[int, str], errors: list[str] | None = None
    ) -> dict[int, tuple[Attachment, ...]]:
        """Program id -> attachments, as of the last discovery (made now when due).

        ``programs`` maps each program id of the pass to its type."""
        ids = frozenset(programs)
        with self._lock:
            now = self._clock()
            due = self._at is None or now - self._at >= self._interval or ids != self._prog_ids
            if due:
                self._names.new_discovery(programs.values())
                if _NETLINK_TYPES.intersection(programs.values()):
                    # The namespace visits wait on replies while the other sources run.
                    self._names.start_namespace_scans()
                ctx = DiscoveryContext(self._names, programs)
                for source in self._sources:
                    self._run(source, ctx)
                self._found = {p: tuple(a) for p, a in ctx.found.items()}
                self._at, self._prog_ids = now, ids
                self.walks += 1
                if errors is not None:
                    errors.extend(ctx.errors)
            return self._found

    def _run(self, source: Source, ctx: DiscoveryContext) -> None:
        try:
            found: dict[int, Sequence[Attachment]] = {
                # Sources give lists; anything else is made one (it is read twice).
                p: a if isinstance(a, (list, tuple)) else list(a)
                for p, a in source.read(ctx).items()
            }
        except (BpfError, OSError) as err:
            # The counters matter more: the pass goes on with this source's last result.
            ctx.errors.append(f"attachments from {source.name}: {err}")
            if source.name not in self._failing:
                self._failing.add(source.name)
                # Error text may carry names from the host; the CLI's log formatter escapes
                # control characters in every line.
                log.warning("attach points from %s are not reported: %s", source.name, err)
            found = self._last.get(source.name, {})
        else:
            if source.name in self._failing:
                self._failing.discard(source.name)
                log.info("attach points from %s are reported again", source.name)
            self._last[source.name] = found
        for prog_id, attachments in found.items():
            if attachments:
                ctx.found.setdefault(prog_id, []).extend(attachments)

    def own_program_ids(self) -> frozenset[int]:
        """Ids of the programs the sources loaded to do their work."""
        return frozenset(
            prog_id
            for source in self._sources
            if source.own_programs is not None
            for prog_id in source.own_programs()
        )

    def close(self) -> None:
        for source in self._sources:
            if source.close is not None:
                source.close()
        self._names.close()
