"""Programs attached through rtnetlink (no BPF link), in every network namespace.

* legacy XDP: ``RTM_GETLINK``'s ``IFLA_XDP`` gives, per device, the program run in each mode
  (``skb``, ``drv``, ``hw``);
* tc: ``cls_bpf`` filters (``RTM_GETTFILTER`` on the clsact/ingress hooks and on every other
  qdisc that takes filters, found by ``RTM_GETQDISC``) and ``act_bpf`` actions, whether bound
  to a filter or standing alone in the namespace's action table (``RTM_GETACTION``).

Each namespace (:func:`otel_bpf.kernel.namespaces.network_namespaces`) is visited once per
discovery (:func:`scan_namespaces`): the process's own in the calling thread, every other in
one short-lived worker thread that enters them in turn, so the calling thread never changes
namespace.  The same visit asks ``BPF_PROG_QUERY`` which tcx and netkit programs each device
runs (an ifindex target is resolved in the caller's namespace), which is how
:meth:`otel_bpf.kernel.attach.Names.device` finds the namespace of a link's device.

A namespace that may not be entered, or a dump that fails, is skipped with one warning per
process (logger ``otel_bpf.attach``); the rest is still reported.  Everything read is
untrusted: names are kept raw (consumers sanitise), and lengths are checked
(:mod:`otel_bpf.kernel.netlink`).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from otel_bpf.kernel import netlink as nl
from otel_bpf.kernel._uapi import AttachType, Cmd, ProgQueryAttr
from otel_bpf.kernel.namespaces import network_namespaces
from otel_bpf.kernel.syscall import prepared, raw_bpf
from otel_bpf.records import Attachment

__all__ = [
    "Device",
    "NamespaceScan",
    "ScanWants",
    "TcProgram",
    "netlink_attachments",
    "parse_action_dump",
    "parse_filter",
    "parse_link",
    "parse_qdisc",
    "scan_namespaces",
]

log = logging.getLogger("otel_bpf.attach")

NETKIT_PRIMARY, NETKIT_PEER = 54, 55
_TCX = (int(AttachType.TCX_INGRESS), int(AttachType.TCX_EGRESS))
_NETKIT = (NETKIT_PRIMARY, NETKIT_PEER)
_QUERY_MAX = 64

_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
_TCAMSG_SIZE = 4
_XDP_MODE_ATTRS = {
    nl.IFLA_XDP_SKB_PROG_ID: "skb",
    nl.IFLA_XDP_DRV_PROG_ID: "drv",
    nl.IFLA_XDP_HW_PROG_ID: "hw",
}
_XDP_ATTACHED_MODE = {
    nl.XDP_ATTACHED_SKB: "skb",
    nl.XDP_ATTACHED_DRV: "drv",
    nl.XDP_ATTACHED_HW: "hw",
}
# The attribute of each classifier's options that holds its actions (linux/pkt_cls.h).
_FILTER_ACTIONS = {"bpf": nl.TCA_BPF_ACT, "matchall": 2, "flower": 3, "basic": 3, "u32": 7}
_LINK_ATTRS = frozenset({nl.IFLA_IFNAME, nl.IFLA_LINKINFO, nl.IFLA_XDP})
# Qdiscs that take no filters: no dump is asked of them.
_NO_FILTERS = frozenset({"noqueue", "pfifo_fast", "pfifo", "bfifo", "pfifo_head_drop", "mq"})


@dataclass(frozen=True)
class Device:
    """One network device as ``RTM_GETLINK`` shows it."""

    ifindex: int
    name: str
    """Raw, untrusted."""
    kind: str | None = None
    """``IFLA_INFO_KIND`` (``veth``, ``netkit``, ...), when the device has one."""
    xdp: tuple[tuple[str, int], ...] = ()
    """``(mode, program id)`` of each XDP program the device runs."""


@dataclass(frozen=True)
class TcProgram:
    """A ``cls_bpf`` filter's or an ``act_bpf`` action's program."""

    prog_id: int
    ifindex: int | None = None
    """None for an action found only in the action table (bound to no filter we read)."""
    parent: int | None = None
    priority: int | None = None
    action_index: int | None = None
    """The ``act_bpf`` action's index; None for a ``cls_bpf`` filter."""


@dataclass(frozen=True)
class ScanWants:
    """What a visit asks of a namespace besides its devices and their XDP programs."""

    tc: bool = True
    """tc filters (``sched_cls``/``sched_act`` programs are loaded)."""
    actions: bool = True
    """The action table (``sched_act`` programs are loaded)."""
    query: bool = True
    """tcx/netkit ``BPF_PROG_QUERY`` per device (``sched_cls`` programs are loaded)."""

    @classmethod
    def for_types(cls, types: Iterable[str]) -> ScanWants:
        kinds = set(types)
        return cls(
            tc=bool(kinds & {"sched_cls", "sched_act"}),
            actions="sched_act" in kinds,
            query="sched_cls" in kinds,
        )


@dataclass
class NamespaceScan:
    """What one visit of a network namespace found."""

    inode: int
    own: bool
    """The process's own namespace: its devices' names are shown plain."""
    devices: dict[int, Device] = field(default_factory=dict)
    tc: list[TcProgram] = field(default_factory=list)
    queried: dict[tuple[int, int], frozenset[int]] = field(default_factory=dict)
    """``(ifindex, attach type)`` -> the tcx/netkit programs ``BPF_PROG_QUERY`` lists."""
    query_later: bool = False
    """The own namespace: the calling thread is in it, so a device is queried only when a
    link asks about it, instead of every device at the visit."""

    def target(self, name: str) -> str:
        """How a device of this namespace is written: plain here, ``name@netns:<inode>``
        elsewhere."""
        return name if self.own else f"{name}@netns:{self.inode}"

    def runs(self, ifindex: int, prog_id: int, attach_type: int | None) -> bool:
        """Whether device ``ifindex`` here runs ``prog_id`` (XDP when ``attach_type`` is
        None, else the tcx/netkit hook)."""
        if attach_type is None:
            device = self.devices.get(ifindex)
            return device is not None and any(p == prog_id for _m, p in device.xdp)
        key = (ifindex, attach_type)
        if self.query_later and key not in self.queried:
            self.queried[key] = _queried(ifindex, attach_type)
        return prog_id in self.queried.get(key, ())


# --- parsing (pure: tested on hand-built messages) ---------------------------------------


def parse_link(payload: bytes) -> Device | None:
    """The device of one ``RTM_NEWLINK`` message; None when it is too short or unnamed."""
    if len(payload) < _IFINFO.size:
        return None
    ifindex = _IFINFO.unpack_from(payload)[2]
    attrs = nl.attr_map(payload, _IFINFO.size, _LINK_ATTRS)
    name = nl.text(attrs.get(nl.IFLA_IFNAME))
    if ifindex <= 0 or name is None:
        return None
    kind = None
    if (linkinfo := attrs.get(nl.IFLA_LINKINFO)) is not None:
        kind = nl.text(nl.attr_map(linkinfo).get(nl.IFLA_INFO_KIND))
    xdp = parse_xdp(attrs[nl.IFLA_XDP]) if nl.IFLA_XDP in attrs else ()
    return Device(ifindex, name, kind, xdp)


def parse_xdp(payload: bytes) -> tuple[tuple[str, int], ...]:
    """``(mode, program id)`` from an ``IFLA_XDP`` nest: the per-mode ids the kernel gives
    for every attached mode, or ``IFLA_XDP_PROG_ID`` with ``IFLA_XDP_ATTACHED``'s mode."""
    attrs = nl.attr_map(payload)
    found: list[tuple[str, int]] = []
    for kind, mode in _XDP_MODE_ATTRS.items():
        prog_id = nl.u32(attrs.get(kind))
        if prog_id:
            found.append((mode, prog_id))
    if not found:
        attached = attrs.get(nl.IFLA_XDP_ATTACHED, b"\0")[:1]
        only = _XDP_ATTACHED_MODE.get(attached[0] if attached else 0)
        prog_id = nl.u32(attrs.get(nl.IFLA_XDP_PROG_ID))
        if only and prog_id:
            found.append((only, prog_id))
    return tuple(sorted(found))


def parse_qdisc(payload: bytes) -> tuple[int, int, int, str] | None:
    """``(ifindex, handle, parent, kind)`` of one ``RTM_NEWQDISC`` message."""
    if len(payload) < _TCMSG.size:
        return None
    _family, ifindex, handle, parent, _info = _TCMSG.unpack_from(payload)
    kind = nl.text(nl.attr_map(payload, _TCMSG.size).get(nl.TCA_KIND))
    return (ifindex, handle, parent, kind) if kind else None


def parse_filter(payload: bytes) -> list[TcProgram]:
    """The programs of one ``RTM_NEWTFILTER`` message: a ``cls_bpf`` filter's, and those of
    the ``act_bpf`` actions bound to a filter of a kind whose actions we know."""
    if len(payload) < _TCMSG.size:
        return []
    _family, ifindex, _handle, parent, info = _TCMSG.unpack_from(payload)
    attrs = nl.attr_map(payload, _TCMSG.size)
    kind = nl.text(attrs.get(nl.TCA_KIND))
    options = attrs.get(nl.TCA_OPTIONS)
    if kind is None or options is None:
        return []  # the head of a priority's filter list: no filter of its own
    priority = info >> 16
    found: list[TcProgram] = []
    opts = nl.attr_map(options)
    if kind == "bpf" and (prog_id := nl.u32(opts.get(nl.TCA_BPF_ID))):
        found.append(TcProgram(prog_id, ifindex, parent, priority))
    if (act_attr := _FILTER_ACTIONS.get(kind)) is not None and act_attr in opts:
        found.extend(
            TcProgram(prog_id, ifindex, parent, priority, index)
            for prog_id, index in parse_actions(opts[act_attr])
        )
    return found


def parse_actions(payload: bytes) -> list[tuple[int, int | None]]:
    """``(program id, action index)`` of each ``act_bpf`` action in a list of actions (a
    filter's, or an action dump's ``TCA_ACT_TAB``)."""
    found: list[tuple[int, int | None]] = []
    for _order, action in nl.rtattrs(payload):
        attrs = nl.attr_map(action)
        if nl.text(attrs.get(nl.TCA_ACT_KIND)) != "bpf" or nl.TCA_ACT_OPTIONS not in attrs:
            continue
        opts = nl.attr_map(attrs[nl.TCA_ACT_OPTIONS])
        prog_id = nl.u32(opts.get(nl.TCA_ACT_BPF_ID))
        # struct tc_act_bpf starts with tc_gen's index.
        index = nl.u32(opts.get(nl.TCA_ACT_BPF_PARMS)) or nl.u32(attrs.get(nl.TCA_ACT_INDEX))
        if prog_id:
            found.append((prog_id, index))
    return found


def parse_action_dump(payload: bytes) -> list[TcProgram]:
    """The ``act_bpf`` programs of one ``RTM_NEWACTION`` message of an action dump."""
    tab = nl.attr_map(payload, _TCAMSG_SIZE).get(nl.TCA_ACT_TAB)
    if tab is None:
        return []
    return [TcProgram(prog_id, action_index=index) for prog_id, index in parse_actions(tab)]


def direction(parent: int | None) -> str | None:
    """``ingress``/``egress`` for the clsact (and ingress qdisc) hooks; None elsewhere."""
    if parent == nl.TC_INGRESS_PARENT:
        return "ingress"
    if parent == nl.TC_EGRESS_PARENT:
        return "egress"
    return None


# --- requests ---------------------------------------------------------------------------


def link_dump_request() -> bytes:
    """An ``RTM_GETLINK`` dump's body: every device, without statistics."""
    ext = struct.pack("=I", nl.RTEXT_FILTER_SKIP_STATS)
    return _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + nl.attr(nl.IFLA_EXT_MASK, ext)


def tc_request(ifindex: int = 0, parent: int = 0, handle: int = 0, info: int = 0) -> bytes:
    """A ``struct tcmsg`` (qdisc and filter requests)."""
    return _TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, parent, info)


def action_dump_request(kind: str = "bpf") -> bytes:
    """An ``RTM_GETACTION`` dump's body: every action of ``kind``."""
    by_kind = nl.attr(nl.TCA_ACT_KIND, kind.encode() + b"\0")
    tab = nl.attr(nl.TCA_ACT_TAB | nl.NLA_F_NESTED, nl.attr(1 | nl.NLA_F_NESTED, by_kind))
    return b"\0" * _TCAMSG_SIZE + tab


def filter_parents(qdiscs: Iterable[tuple[int, int, int, str]]) -> dict[int, list[int]]:
    """ifindex -> the parents to dump filters of: clsact's two hooks, the ingress qdisc's,
    and every other qdisc that takes filters (by its handle; 0 for a root without one)."""
    parents: dict[int, list[int]] = {}
    for ifindex, handle, parent, kind in qdiscs:
        if kind == "clsact":
            wanted = [nl.TC_INGRESS_PARENT, nl.TC_EGRESS_PARENT]
        elif kind == "ingress":
            wanted = [nl.TC_INGRESS_PARENT]
        elif kind in _NO_FILTERS or (handle == 0 and parent != nl.TC_H_ROOT):
            continue
        else:
            wanted = [handle & 0xFFFF0000]
        known = parents.setdefault(ifindex, [])
        known.extend(p for p in wanted if p not in known)
    return parents


# --- one namespace ---------------------------------------------------------------------

_warned_lock = threading.Lock()
_warned = False


def warn_once(message: str, *args: object) -> None:
    """One warning per process for everything this source leaves out: a host where a
    namespace may not be entered stays so, and would repeat it every discovery."""
    global _warned
    with _warned_lock:
        if _warned:
            return
        _warned = True
    log.warning(message, *args)


def _queried(ifindex: int, attach_type: int) -> frozenset[int]:
    """``BPF_PROG_QUERY`` of device ``ifindex`` in the calling thread's namespace."""
    ids = (ctypes.c_uint32 * _QUERY_MAX)()
    attr = ProgQueryAttr(
        target=ifindex, attach_type=attach_type, prog_ids=ctypes.addressof(ids), count=_QUERY_MAX
    )
    if raw_bpf(prepared(Cmd.PROG_QUERY, attr)) < 0:
        return frozenset()
    return frozenset(ids[: min(attr.count, _QUERY_MAX)])


def scan_namespace(inode: int, own: bool, wants: ScanWants) -> NamespaceScan:
    """Visit the calling thread's network namespace (known as ``inode``; ``own``: the
    process's own, whose devices are queried later, by :meth:`NamespaceScan.runs`).  Raises
    ``OSError`` when its devices cannot be listed; a failing tc dump is skipped with the
    one warning."""
    scan = NamespaceScan(inode, own, query_later=own and wants.query)
    with nl.RouteSocket() as sock:
        for message in sock.dump(nl.RTM_GETLINK, link_dump_request()):
            if message.type == nl.RTM_NEWLINK and (device := parse_link(message.payload)):
                scan.devices[device.ifindex] = device
        if wants.query and not own:
            for device in scan.devices.values():
                types = _TCX + (_NETKIT if device.kind == "netkit" else ())
                for at in types:
                    if ids := _queried(device.ifindex, at):
                        scan.queried[device.ifindex, at] = ids
        if wants.tc:
            _scan_tc(sock, scan, wants.actions)
    return scan


def _scan_tc(sock: nl.RouteSocket, scan: NamespaceScan, actions: bool) -> None:
    try:
        qdiscs = [
            q
            for m in sock.dump(nl.RTM_GETQDISC, tc_request())
            if m.type == nl.RTM_NEWQDISC and (q := parse_qdisc(m.payload))
        ]
    except OSError as err:
        warn_once("tc programs in network namespace %d are not reported: %s", scan.inode, err)
        return
    for ifindex, parents in filter_parents(qdiscs).items():
        for parent in parents:
            try:
                replies = sock.dump(nl.RTM_GETTFILTER, tc_request(ifindex, parent))
            except OSError as err:
                if err.errno in (errno.ENODEV, errno.EINVAL, errno.ENOENT):
                    continue  # the device or qdisc went away meanwhile
                warn_once("tc filters in namespace %d are not reported: %s", scan.inode, err)
                continue
            for m in replies:
                if m.type == nl.RTM_NEWTFILTER:
                    scan.tc.extend(parse_filter(m.payload))
    if not actions:
        return
    try:
        replies = sock.dump(nl.RTM_GETACTION, action_dump_request())
    except OSError as err:
        warn_once("tc actions in network namespace %d are not reported: %s", scan.inode, err)
        return
    bound = {p.action_index for p in scan.tc if p.action_index is not None}
    for m in replies:
        if m.type == nl.RTM_NEWACTION:
            scan.tc.extend(p for p in parse_action_dump(m.payload) if p.action_index not in bound)


def scan_namespaces(
    wants: ScanWants,
    namespaces: Mapping[int, str] | None = None,
    *,
    own_only: bool = False,
    known: Mapping[int, NamespaceScan] | None = None,
) -> dict[int, NamespaceScan]:
    """Inode -> what a visit of each network namespace found, the own namespace first.

    The own namespace is read by the calling thread, the others by one worker thread that
    enters each in turn (none with ``own_only``); those in ``known`` are not visited again.
    A namespace that may not be entered or listed is left out (one warning per process)."""
    spaces = network_namespaces() if namespaces is None else dict(namespaces)
    scans: dict[int, NamespaceScan] = {}
    if not spaces:
        return scans
    known = known or {}
    own, *others = spaces
    if own in known:
        scans[own] = known[own]
    else:
        try:
            scans[own] = scan_namespace(own, True, wants)
        except Exception as err:  # as for the other namespaces, below
            warn_once("network devices of this namespace are not reported: %s", err)
    if own_only:
        return scans
    scans.update((ino, known[ino]) for ino in others if ino in known)
    try:
        visited = nl.in_network_namespaces(
            {ino: spaces[ino] for ino in others if ino not in known},
            lambda ino: scan_namespace(ino, False, wants),
        )
    except OSError as err:  # the worker did not finish in time
        warn_once("other network namespaces are not visited: %s", err)
        return scans
    for ino, outcome in visited.items():
        if isinstance(outcome, NamespaceScan):
            scans[ino] = outcome
        elif isinstance(outcome, OSError) and outcome.errno == errno.ENOENT:
            continue  # its last process left meanwhile
        else:
            # Whatever a namespace's replies hold, the others and the links still report.
            warn_once("network namespace %d is not visited: %s", ino, outcome)
    return scans


# --- the source ---------------------------------------------------------------------------


def netlink_attachments(
    scans: Iterable[NamespaceScan], linked: Mapping[int, Iterable[Attachment]] | None = None
) -> dict[int, list[Attachment]]:
    """Program id -> its XDP and tc attachments made without a link, from the namespaces'
    scans.  ``linked`` (what the link walk found) keeps an XDP program a link holds, which
    ``IFLA_XDP`` shows too, from being reported twice."""
    held: set[tuple[int, int, int | None]] = set()
    for prog_id, attachments in (linked or {}).items():
        for a in attachments:
            if a.kind == "xdp" and a.via == "link" and a.ifindex:
                held.add((prog_id, a.ifindex, a.netns))
    found: dict[int, list[Attachment]] = {}
    for scan in scans:
        for device in sorted(scan.devices.values(), key=lambda d: d.ifindex):
            for mode, prog_id in device.xdp:
                key = (prog_id, device.ifindex)
                if (*key, scan.inode) in held or (*key, None) in held:
                    continue
                found.setdefault(prog_id, []).append(
                    Attachment(
                        "xdp", "netlink", None, "xdp", scan.target(device.name),
                        ifindex=device.ifindex, ifname=device.name, netns=scan.inode, mode=mode,
                    )
                )  # fmt: skip
        for tc in scan.tc:
            found.setdefault(tc.prog_id, []).append(_tc_attachment(scan, tc))
    return found


def _tc_attachment(scan: NamespaceScan, tc: TcProgram) -> Attachment:
    device = scan.devices.get(tc.ifindex) if tc.ifindex else None
    if device is not None:
        target = scan.target(device.name)
    elif tc.ifindex:
        target = f"if{tc.ifindex}" if scan.own else f"if{tc.ifindex}@netns:{scan.inode}"
    else:
        where = f"action {tc.action_index}"
        target = where if scan.own else f"{where}@netns:{scan.inode}"
    return Attachment(
        "tc", "netlink", None, None, target,
        ifindex=tc.ifindex, ifname=device.name if device else None, netns=scan.inode,
        direction=direction(tc.parent), priority=tc.priority,
    )  # fmt: skip
