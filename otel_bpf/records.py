"""Immutable records of what the kernel reports: programs, maps, owners, the stats state.

These are the pure core's vocabulary.  The kernel boundary builds them; everything above it
(sampler, OpenTelemetry, live view, JSON) only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Workload:
    """The cgroup a process runs in and the container and Kubernetes pod its path names
    (:func:`otel_bpf.workload.parse_proc_cgroup`).  Every field is None when unknown."""

    cgroup: str | None = None
    """The cgroup path as ``/proc/<pid>/cgroup`` shows it (the v2 one; on a v1 or hybrid host
    without a useful v2 path, the v1 path that names the container), relative to the reader's
    cgroup namespace; untrusted text, not sanitised."""
    container_id: str | None = None
    """64 lowercase hex digits (Docker, containerd, CRI-O, Podman, nerdctl), the innermost
    container the path names; None outside a container."""
    pod_uid: str | None = None
    """The Kubernetes pod's uid, canonical lowercase UUID form; None outside a pod."""
    qos_class: str | None = None
    """``guaranteed``, ``burstable`` or ``besteffort`` from the pod's cgroup; None outside a
    pod or when the path does not show it."""


UNKNOWN_WORKLOAD = Workload()
"""A process whose cgroup could not be read (it exited, or ``/proc`` refused)."""


@dataclass(frozen=True, slots=True)
class Owner:
    """A process that holds a program open, directly or through a BPF link."""

    pid: int
    comm: str
    """``/proc/<pid>/comm`` as the kernel reports it (untrusted text, not sanitised)."""
    executable: str
    """Base name of ``/proc/<pid>/exe``; empty when it cannot be read (kernel thread, race)."""
    via: tuple[str, ...]
    """How the process holds the program, sorted, no duplicates: ``("prog",)`` through a
    program fd, ``("link",)`` through a BPF link fd, ``("link", "prog")`` through both (as
    libbpf-based loaders do).  One process is one owner, whatever number of fds it holds."""
    workload: Workload = UNKNOWN_WORKLOAD
    """The process's cgroup and the container and pod it names, read in the same pass."""


@dataclass(frozen=True, slots=True)
class MapRecord:
    """A BPF map referenced by a program."""

    id: int
    type: str
    """bpftool's name for the map type (``hash``, ``array``, ...), or ``type_N``."""
    name: str
    key_size: int
    value_size: int
    max_entries: int
    memlock_bytes: int | None
    """``memlock`` from the map fd's fdinfo; None where the kernel does not report it."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """One place a program is attached (a hook, a device, a cgroup, a function, ...)."""

    kind: str
    """``xdp``, ``tc`` (a legacy tc filter or action), ``tcx``, ``netkit``, ``cgroup``,
    ``netns``, ``socket``, ``tracing``, ``raw_tracepoint``, ``kprobe``, ``uprobe``,
    ``tracepoint``, ``perf_event``, ``netfilter``, ``struct_ops``, ``iter``, ``sockmap``, or
    ``link_type_N`` for a link type this version does not know."""
    via: str
    """How the program was attached, which is how it was found: ``link`` (a BPF link),
    ``netlink`` (a tc filter or action, or XDP set on a device without a link),
    ``prog_attach`` (``BPF_PROG_ATTACH`` to a cgroup, a network namespace or a sockmap),
    ``socket`` (``SO_ATTACH_BPF`` / ``SO_ATTACH_REUSEPORT_EBPF`` on a process's socket) or
    ``perf_event`` (``PERF_EVENT_IOC_SET_BPF`` on a perf event a process holds)."""
    link_id: int | None
    """The BPF link's id (as ``bpftool link show`` prints it); None when not through a link."""
    attach_type: str | None
    """The kernel's ``enum bpf_attach_type`` name, lowercase, without ``BPF_``
    (``xdp``, ``tcx_ingress``, ``cgroup_inet_egress``, ``trace_fentry``, ...)."""
    target: str
    """What it is attached to, readable: ``lo``, ``eth0@netns:4026532280`` (a device in
    another network namespace than this process's), ``/sys/fs/cgroup/test``,
    ``tcp_v4_connect``, ``sys_enter``, ``net:[4026531840]``.  Names come from the kernel
    (untrusted text, not sanitised)."""
    ifindex: int | None = None
    ifname: str | None = None
    """The interface's name in its own network namespace (``netns``); None when no namespace
    has a device with that index running the program (an index means another device in
    another namespace)."""
    netns: int | None = None
    """The network namespace's inode number: the one the device lives in (xdp, tc, tcx,
    netkit), or the one a netns link or query is attached to."""
    direction: str | None = None
    """``ingress``/``egress`` (tcx; tc on a clsact or ingress qdisc), ``primary``/``peer``
    (netkit)."""
    cgroup_id: int | None = None
    cgroup_path: str | None = None
    """The cgroup2 directory whose inode is ``cgroup_id``; None when not found."""
    container_id: str | None = None
    """The container the cgroup path names (:func:`otel_bpf.workload.workload_of_path`)."""
    pod_uid: str | None = None
    """The Kubernetes pod the cgroup path names."""
    qos_class: str | None = None
    """That pod's QoS class (``guaranteed``, ``burstable``, ``besteffort``) when the path
    shows it."""
    priority: int | None = None
    """The netfilter hook priority, or a tc filter's priority."""
    mode: str | None = None
    """XDP: ``skb``, ``drv`` or ``hw`` (the mode a device runs it in)."""
    pid: int | None = None
    """The process holding the socket or perf event the program is attached to."""
    fd: int | None = None
    """That socket's or perf event's file descriptor number in process ``pid``."""
    comm: str | None = None
    """Process ``pid``'s name, as /proc shows it (untrusted text, not sanitised)."""
    map_id: int | None = None
    """The map a struct_ops, sockmap or map-iterator link uses."""
    target_prog_id: int | None = None
    """The program a tracing program (fentry/fexit on a BPF program, freplace) is attached to."""
    attach_flags: str | None = None
    """How a cgroup attach type of the target cgroup takes programs (``BPF_PROG_ATTACH``
    flags, as bpftool names them): ``multi`` (``BPF_F_ALLOW_MULTI``: several programs, the
    subtree's too), ``override`` (``BPF_F_ALLOW_OVERRIDE``: a program below replaces this
    one); None without either (the only program of its subtree) or for another kind."""


class CpuCounters(NamedTuple):
    """One program's counters on one CPU (the iterator path's per-CPU figures)."""

    cpu: int
    """The logical CPU number (one of the host's possible CPUs)."""
    run_time_ns: int
    run_cnt: int
    recursion_misses: int


@dataclass(frozen=True, slots=True)
class ProgramRecord:
    """One BPF program as read in one pass."""

    id: int
    type: str
    """bpftool's lowercase name (``socket_filter``, ``xdp``, ``sched_cls``, ...) or ``type_N``."""
    type_id: int
    name: str
    """Full name: from BTF func_info when the kernel cut it at 15 characters; may be empty."""
    tag: str
    """The program tag as 16 lowercase hex digits, as bpftool prints it."""
    run_time_ns: int
    run_cnt: int
    recursion_misses: int | None
    """None on kernels before 5.12, which do not report it."""
    load_time: float
    """Wall-clock load time, seconds since the UNIX epoch."""
    uid: int
    verified_insns: int | None
    """None on kernels before 5.16."""
    xlated_size: int
    jited_size: int
    map_ids: tuple[int, ...]
    btf_id: int
    """0 when the program has no BTF."""
    memlock_bytes: int | None
    """``memlock`` from the program fd's fdinfo; None when not read or not reported."""
    owners: tuple[Owner, ...] | None = None
    """Processes holding the program; ``()`` for none, None when owners were not looked up."""
    maps: tuple[MapRecord, ...] | None = None
    """The maps in ``map_ids``; None when maps were not looked up."""
    attachments: tuple[Attachment, ...] | None = None
    """Where the program is attached (BPF links); ``()`` for nowhere found, None when not
    looked up (``SourceOptions.attachments``)."""
    per_cpu: tuple[CpuCounters, ...] | None = None
    """The counters on each possible CPU, in CPU order (they sum to the three totals); None
    unless asked for (``SourceOptions.per_cpu``, iterator path only)."""


@dataclass(frozen=True, slots=True)
class StatsState:
    """Whether the kernel is counting run time right now, and who keeps it on."""

    ours: bool
    """This process holds a BPF_ENABLE_STATS fd."""
    sysctl: bool
    """``kernel.bpf_stats_enabled`` is 1 (set by anyone, the legacy switch)."""
    others: bool
    """Another process holds an ``anon_inode:bpf-stats`` fd."""

    @property
    def enabled(self) -> bool:
        """Stats are being counted."""
        return self.ours or self.sysctl or self.others

    def describe(self) -> str:
        """``on``, ``on (by another process)``, ``on (sysctl)`` or ``off``."""
        if self.ours:
            return "on"
        if self.others:
            return "on (by another process)"
        if self.sysctl:
            return "on (sysctl)"
        return "off"
