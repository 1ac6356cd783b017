"""Where each program is attached, from the kernel's BPF links.

Every link on the host is walked like the programs are (``BPF_LINK_GET_NEXT_ID`` ->
``BPF_LINK_GET_FD_BY_ID`` -> ``BPF_OBJ_GET_INFO_BY_FD`` -> close), and its
``struct bpf_link_info`` decoded by link type into an :class:`~otel_bpf.records.Attachment`
of the program the link holds.  A link that goes away during the walk is skipped.

Decoding (:func:`decode_link_info`) is separate from the syscalls and from the look-ups that
turn numbers into names (:class:`Names`: interface index -> name, cgroup id -> directory,
BTF type id -> function), so hand-built info bytes are testable without privileges.

The union's layout per link type is in :data:`otel_bpf.kernel._uapi.BPF_LINK_INFO_SIZE`.
Fields a kernel does not fill (older than the field) read as zero: the buffer is zeroed
before each call, and ``info_len`` tells how much the kernel wrote.

Attachments made without a link (netlink tc/XDP, ``BPF_PROG_ATTACH`` cgroup programs,
sockets) are found by the other sources of :mod:`otel_bpf.kernel.attach_discovery`.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

from otel_bpf.kernel._uapi import (
    BPF_LINK_INFO_SIZE,
    BtfInfo,
    Cmd,
    GetIdAttr,
    InfoByFdAttr,
    LinkType,
    PerfEventType,
    ProgInfo,
    attach_type_name,
    filled,
)
from otel_bpf.kernel.cgroup_tree import walk_cgroups
from otel_bpf.kernel.errors import BpfError, BpfPermissionError
from otel_bpf.kernel.syscall import bpf, close, command_error, libc, prepared, raw_bpf
from otel_bpf.kernel.system import cgroup2_mount_point
from otel_bpf.records import Attachment
from otel_bpf.workload import workload_of_path

if TYPE_CHECKING:
    from otel_bpf.kernel.attach_netlink import NamespaceScan, ScanWants

__all__ = [
    "DISCOVERY_INTERVAL",
    "LinkWalk",
    "CGROUP_GONE",
    "Names",
    "cgroup_target",
    "decode_link_info",
    "read_link_attachments",
]

log = logging.getLogger("otel_bpf.attach")

CGROUP2_ROOT = "/sys/fs/cgroup"
DISCOVERY_INTERVAL = 10.0
"""Seconds between two walks of the links, unless the set of programs changes."""

LIST_LINKS_PERMISSION_MESSAGE = (
    "permission denied listing BPF links (BPF_LINK_GET_NEXT_ID): needs CAP_SYS_ADMIN"
)

_HEAD = struct.Struct("<III")  # type, id, prog_id
_U32 = struct.Struct("<I")
_U32X2 = struct.Struct("<II")
_U32X3 = struct.Struct("<III")
_U64 = struct.Struct("<Q")
_NETFILTER = struct.Struct("<IIiI")
# Name buffers: tracepoint and function names are short; a uprobe's file may be a long path.
_NAME_SIZE = 512
_PATH_SIZE = 4096
_TARGETS_KEPT = 4096
# The namespace visits' own deadline is 10 s (netlink.in_network_namespaces): a little more.
_PREFETCH_TIMEOUT = 12.0

# include/uapi/linux/netfilter.h: NFPROTO_*, and the hooks (NF_INET_*; NF_NETDEV_* for
# NFPROTO_NETDEV, where 0 and 1 are ingress and egress).
_NF_PROTO = {1: "inet", 2: "ipv4", 3: "arp", 5: "netdev", 7: "bridge", 10: "ipv6"}
_NF_INET_HOOKS = ("prerouting", "input", "forward", "output", "postrouting")
_NF_NETDEV_HOOKS = ("ingress", "egress")

_PERF_KIND = {
    PerfEventType.UPROBE: "uprobe",
    PerfEventType.URETPROBE: "uprobe",
    PerfEventType.KPROBE: "kprobe",
    PerfEventType.KRETPROBE: "kprobe",
    PerfEventType.TRACEPOINT: "tracepoint",
    PerfEventType.EVENT: "perf_event",
}
_BPF_F_KPROBE_MULTI_RETURN = 1
_BPF_F_UPROBE_MULTI_RETURN = 1

_KIND = {
    LinkType.RAW_TRACEPOINT: "raw_tracepoint",
    LinkType.TRACING: "tracing",
    LinkType.CGROUP: "cgroup",
    LinkType.ITER: "iter",
    LinkType.NETNS: "netns",
    LinkType.XDP: "xdp",
    LinkType.PERF_EVENT: "perf_event",
    LinkType.KPROBE_MULTI: "kprobe",
    LinkType.UPROBE_MULTI: "uprobe",
    LinkType.STRUCT_OPS: "struct_ops",
    LinkType.NETFILTER: "netfilter",
    LinkType.TCX: "tcx",
    LinkType.NETKIT: "netkit",
    LinkType.SOCKMAP: "sockmap",
}
# Link types whose info carries no attach type: the one LINK_CREATE takes for them.
_IMPLIED_ATTACH_TYPE = {
    LinkType.RAW_TRACEPOINT: "trace_raw_tp",
    LinkType.ITER: "trace_iter",
    LinkType.XDP: "xdp",
    LinkType.PERF_EVENT: "perf_event",
    LinkType.KPROBE_MULTI: "trace_kprobe_multi",
    LinkType.UPROBE_MULTI: "trace_uprobe_multi",
    LinkType.STRUCT_OPS: "struct_ops",
    LinkType.NETFILTER: "netfilter",
}
_DIRECTION = {
    "tcx_ingress": "ingress",
    "tcx_egress": "egress",
    "netkit_primary": "primary",
    "netkit_peer": "peer",
}


def name_request(data: bytes) -> tuple[int, int, int] | None:
    """For a link whose info has a name behind a pointer: ``(pointer offset, length offset,
    buffer size)`` of a second call that fetches it; None for other links.

    ``data`` is the info of a first call made without a buffer.
    """
    link_type = _HEAD.unpack_from(data)[0]
    if link_type in (LinkType.RAW_TRACEPOINT, LinkType.ITER):
        return 16, 24, _NAME_SIZE
    if link_type == LinkType.UPROBE_MULTI:
        return 16, 48, _PATH_SIZE
    if link_type == LinkType.PERF_EVENT:
        sub = _U32.unpack_from(data, 16)[0]
        if sub in (PerfEventType.UPROBE, PerfEventType.URETPROBE):
            return 24, 32, _PATH_SIZE
        if sub in (PerfEventType.KPROBE, PerfEventType.KRETPROBE, PerfEventType.TRACEPOINT):
            return 24, 32, _NAME_SIZE
    return None


class Names:
    """Turns the numbers in link info into names, caching what does not change.

    Tests replace it with one answering from dicts.  Every method returns None when it
    cannot tell.
    """

    def __init__(self, cgroup_root: str | None = None) -> None:
        self._cgroup_root = cgroup_root or cgroup2_root()
        self._cgroups: dict[int, str] = {}
        self._cgroups_scanned_at: float | None = None
        # The cgroup2 root, opened once, for cgroups opened by their id (cgroup_by_id).
        self._cgroup_root_fd = -1
        self._handles = True
        self._vmlinux: Any = None
        self._vmlinux_failed = False
        self._btf_objects: dict[int, tuple[str, bool] | None] = {}
        # A program's attach target never changes: (prog id, obj id, btf id) -> target.
        self._targets: dict[tuple[int, int, int], tuple[str, int | None]] = {}
        # This discovery's visits of the network namespaces (new_discovery forgets them).
        self._scans: dict[int, NamespaceScan] | None = None
        self._scans_complete = False
        self._wants: ScanWants | None = None
        # Whether this discovery's visits ask each device its tcx/netkit programs (only
        # device() needs that).
        self._query_devices = False
        # Visits started ahead (start_namespace_scans): the thread and its result.
        self._prefetch: tuple[threading.Thread, list[Any]] | None = None

    @property
    def cgroup_root(self) -> str:
        """Where the cgroup2 hierarchy is mounted (paths are under it)."""
        return self._cgroup_root

    def new_discovery(self, program_types: Iterable[str] | None = None) -> None:
        """Forget the last discovery's visits of the network namespaces: the next look-up
        visits them again, asking what ``program_types`` (the loaded programs' types; all
        when None) can be attached to."""
        from otel_bpf.kernel.attach_netlink import ScanWants

        self._take_prefetch()  # a discovery's visits are never left running into the next
        self._scans = None
        self._scans_complete = False
        self._query_devices = False
        self._wants = ScanWants() if program_types is None else ScanWants.for_types(program_types)

    def start_namespace_scans(self) -> None:
        """Start this discovery's visits of the network namespaces in a thread of their own,
        so that their replies are awaited while the other sources run; the next
        :meth:`namespace_scans` takes the result.  Only before any look-up of this
        discovery."""
        if self._scans is not None or self._prefetch is not None:
            return
        wants = self._wants
        result: list[dict[int, NamespaceScan] | BaseException] = []

        def visit() -> None:
            try:
                from otel_bpf.kernel.attach_netlink import ScanWants, scan_namespaces

                query = replace(wants or ScanWants(), query=False)
                result.append(scan_namespaces(query, own_only=False))
            except BaseException as err:  # handed to the caller
                result.append(err)

        thread = threading.Thread(target=visit, name="otel-bpf-netns-visits", daemon=True)
        thread.start()
        self._prefetch = (thread, result)

    def _take_prefetch(self) -> None:
        if self._prefetch is None:
            return
        thread, result = self._prefetch
        self._prefetch = None
        thread.join(_PREFETCH_TIMEOUT)
        if thread.is_alive() or not result or isinstance(result[0], BaseException):
            return  # visited again by the caller, which reports what fails
        self._scans, self._scans_complete = result[0], True

    def namespace_scans(self) -> dict[int, NamespaceScan]:
        """Inode -> what this discovery's visit of each network namespace found (the own
        one first); each namespace is visited at most once per discovery."""
        self._take_prefetch()
        if self._scans is None or not self._scans_complete:
            self._scans = self._scan(own_only=False)
            self._scans_complete = True
        return self._scans

    def _own_scan(self) -> dict[int, NamespaceScan]:
        self._take_prefetch()
        if self._scans is None:
            self._scans = self._scan(own_only=True)
        return self._scans

    def _scan(self, *, own_only: bool) -> dict[int, NamespaceScan]:
        from otel_bpf.kernel.attach_netlink import ScanWants, scan_namespaces

        wants = self._wants or ScanWants()
        if not self._query_devices:
            # Asking every device of another namespace which tcx/netkit programs it runs
            # only serves device(), which the iterator link walk does not need.
            wants = replace(wants, query=False)
        return scan_namespaces(wants, own_only=own_only, known=self._scans)

    def device(
        self, ifindex: int, prog_id: int = 0, attach_type: int | None = None
    ) -> tuple[str, int, str] | None:
        """``(name, network namespace inode, target text)`` of the device ``ifindex`` that
        runs ``prog_id`` (XDP when ``attach_type`` is None, else that tcx/netkit hook); None
        when no namespace has one.

        A link reports the index its device has in the device's own namespace, where the
        same index may be another device elsewhere: the namespace is the one whose device
        with that index has the program attached (the own one first).  Without
        ``prog_id``, the own namespace's device.  The target is the plain name in the own
        namespace, ``name@netns:<inode>`` in any other.
        """
        if not self._query_devices:
            self._query_devices = True
            self._take_prefetch()
            if self._scans_complete:
                # Visited without asking the devices: visit again, asking them.
                self._scans, self._scans_complete = None, False
        # The own namespace alone first: the others are visited only when it does not
        # have the device (or the program on it).
        for scans in (self._own_scan, self.namespace_scans) if prog_id else (self._own_scan,):
            for scan in scans().values():
                found = scan.devices.get(ifindex)
                here = scan.runs(ifindex, prog_id, attach_type) if prog_id else scan.own
                if found is not None and here:
                    return found.name, scan.inode, scan.target(found.name)
        return None

    def ifname(self, ifindex: int, prog_id: int = 0, attach_type: int | None = None) -> str | None:
        """The name of interface ``ifindex`` in this process's network namespace (with
        ``prog_id``: only when that device runs it, see :meth:`device`)."""
        found = self.device(ifindex, prog_id, attach_type)
        own = {scan.inode for scan in self._own_scan().values() if scan.own}
        return found[0] if found is not None and found[1] in own else None

    def cgroup_path(self, cgroup_id: int) -> str | None:
        """The cgroup2 directory whose inode number is ``cgroup_id`` (the kernel's cgroup id
        is its kernfs node id, the directory's inode); None when it cannot be told or the
        cgroup is gone (:meth:`cgroup_by_id`)."""
        path = self.cgroup_by_id(cgroup_id)
        return None if path is CGROUP_GONE else path

    def cgroup_by_id(self, cgroup_id: int) -> str | None:
        """The cgroup's directory, :data:`CGROUP_GONE` when the cgroup was removed, None when
        it cannot be told.

        A cgroup not seen before (a new container) is opened by its id as a file handle
        (``open_by_handle_at``, as the kernel encodes a cgroup2 directory's handle) and named
        by ``/proc/self/fd``: a few syscalls instead of a scan of the hierarchy.  Where
        handles cannot be opened (no ``CAP_DAC_READ_SEARCH``), a cached scan answers; an id
        not in it rescans, at most once per second.  Paths are kept by id."""
        found = self._cgroups.get(cgroup_id)
        if found is not None:
            return found
        if self._handles:
            try:
                if self._cgroup_root_fd < 0:
                    self._open_cgroup_root()
                path = _path_by_handle(self._cgroup_root_fd, cgroup_id)
            except OSError as err:
                if err.errno in (errno.ESTALE, errno.ENOENT):
                    return CGROUP_GONE
                self._handles = False
            else:
                if path is None:
                    return CGROUP_GONE
                self._cgroups[cgroup_id] = path
                return path
        return self._scanned_cgroup(cgroup_id)

    def _open_cgroup_root(self) -> None:
        """Open the cgroup2 root for handles, once it has shown that it names its own id (a
        root that is not a cgroup2 mount names nothing by a kernfs handle): OSError else."""
        fd = os.open(self._cgroup_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if _path_by_handle(fd, os.fstat(fd).st_ino) != os.path.realpath(self._cgroup_root):
                raise OSError(errno.EINVAL, f"{self._cgroup_root}: not a cgroup2 mount")
        except OSError as err:
            os.close(fd)
            # Whatever the reason, this root is not opened by handles (the scan answers).
            raise OSError(errno.EINVAL, str(err)) from None
        self._cgroup_root_fd = fd

    def _scanned_cgroup(self, cgroup_id: int) -> str | None:
        found = self._cgroups.get(cgroup_id)
        if found is not None:
            return found
        now = time.monotonic()
        if self._cgroups_scanned_at is not None and now - self._cgroups_scanned_at < 1.0:
            return None
        self._cgroups_scanned_at = now
        self._cgroups = _scan_cgroups(self._cgroup_root)
        return self._cgroups.get(cgroup_id)

    def btf_function(self, prog_id: int, obj_id: int, btf_id: int) -> tuple[str, int | None]:
        """The target of a tracing link of program ``prog_id``: ``(text, target program id
        or None)``.  ``obj_id`` is a kernel BTF object (vmlinux or a module) or, for a
        target that is itself a BPF program, that program's id; the two id spaces overlap,
        so the program's own ``attach_btf_obj_id`` (6.0) tells them apart: it names the BTF
        object holding ``btf_id``, a kernel one when the target is the kernel."""
        key = (prog_id, obj_id, btf_id)
        known = self._targets.get(key)
        if known is None:
            if len(self._targets) >= _TARGETS_KEPT:
                self._targets.clear()  # programs come and go: start over now and then
            known = self._targets[key] = self._btf_target(prog_id, obj_id, btf_id)
        return known

    def _btf_target(self, prog_id: int, obj_id: int, btf_id: int) -> tuple[str, int | None]:
        attach_obj = _attach_btf_obj_id(prog_id)
        # Before 6.0 the id is taken for a kernel BTF object when one has it.
        kernel = self._btf_object(obj_id if attach_obj is None else attach_obj)
        if kernel is None or not kernel[1]:
            return f"prog {obj_id} btf_id {btf_id}", obj_id
        name = self._vmlinux_name(btf_id) if kernel[0] == "vmlinux" else None
        if name:
            return name, None
        return f"{kernel[0]} btf_id {btf_id}", None

    def _btf_object(self, obj_id: int) -> tuple[str, bool] | None:
        """``(name, is kernel BTF)`` of BTF object ``obj_id``, None when it does not exist."""
        if obj_id not in self._btf_objects:
            self._btf_objects[obj_id] = _btf_object_name(obj_id)
        return self._btf_objects[obj_id]

    def _vmlinux_name(self, btf_id: int) -> str | None:
        from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf, VmlinuxBtfError

        if self._vmlinux is None and not self._vmlinux_failed:
            try:
                self._vmlinux = VmlinuxBtf()
            except VmlinuxBtfError:
                self._vmlinux_failed = True
        if self._vmlinux is None:
            return None
        try:
            return str(self._vmlinux.type_name(btf_id)) or None
        except VmlinuxBtfError:
            return None

    def close(self) -> None:
        """Release vmlinux BTF (opened at the first tracing link) and the cgroup2 root."""
        self._take_prefetch()
        if self._cgroup_root_fd >= 0:
            os.close(self._cgroup_root_fd)
            self._cgroup_root_fd = -1
        if self._vmlinux is not None:
            self._vmlinux.close()
            self._vmlinux = None


CGROUP_GONE = "\0gone"
"""What :meth:`Names.cgroup_by_id` says of a cgroup removed since it was seen."""

FILEID_KERNFS = 0xFE
"""The file handle type of a kernfs (cgroup2) node: its 64-bit id, the cgroup id."""


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("id", ctypes.c_uint64),
    ]


def _path_by_handle(root_fd: int, cgroup_id: int) -> str | None:
    """The path of cgroup ``cgroup_id`` opened by its file handle; None for a cgroup
    removed meanwhile; OSError when it cannot be opened."""
    handle = _FileHandle(8, FILEID_KERNFS, cgroup_id)
    fd = libc.open_by_handle_at(root_fd, ctypes.byref(handle), os.O_PATH | os.O_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
    if path.endswith(" (deleted)") or not path.startswith("/"):
        return None
    return path


def cgroup2_root(mounts: str = "/proc/mounts") -> str:
    """Where the cgroup2 hierarchy is mounted (``/sys/fs/cgroup``, or
    ``/sys/fs/cgroup/unified`` on a hybrid host); ``/sys/fs/cgroup`` when that cannot be
    told."""
    mount = None
    with suppress(OSError):
        mount = cgroup2_mount_point(mounts)
    return mount or CGROUP2_ROOT


def _scan_cgroups(root: str) -> dict[int, str]:
    """Inode number (the cgroup id) -> path of every directory of the cgroup2 hierarchy at
    ``root``; empty when ``root`` cannot be opened."""
    try:
        return {cgroup_id: path for _fd, cgroup_id, path in walk_cgroups(root)}
    except OSError:
        return {}


def _attach_btf_obj_id(prog_id: int) -> int | None:
    """``attach_btf_obj_id`` of program ``prog_id``; None when the kernel (before 6.0) does
    not report it or the program is gone."""
    try:
        fd = bpf(Cmd.PROG_GET_FD_BY_ID, GetIdAttr(start_id=prog_id), f"program {prog_id}")
    except BpfError:
        return None
    try:
        info = ProgInfo()
        attr = InfoByFdAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
        bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, f"program {prog_id}")
        if not filled(info, "attach_btf_obj_id", attr.info_len):
            return None
        return int(info.attach_btf_obj_id)
    except BpfError:
        return None
    finally:
        close(fd)


def _btf_object_name(obj_id: int) -> tuple[str, bool] | None:
    try:
        fd = bpf(Cmd.BTF_GET_FD_BY_ID, GetIdAttr(start_id=obj_id), f"btf {obj_id}")
    except BpfError:
        return None
    try:
        name = ctypes.create_string_buffer(64)
        info = BtfInfo(name=ctypes.addressof(name), name_len=ctypes.sizeof(name))
        attr = InfoByFdAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
        bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, f"btf {obj_id}")
        if not filled(info, "kernel_btf", attr.info_len):
            return None
        return name.value.decode(errors="replace"), bool(info.kernel_btf)
    except BpfError:
        return None
    finally:
        close(fd)


def _text(raw: bytes) -> str:
    end = raw.find(b"\0")
    return (raw if end < 0 else raw[:end]).decode(errors="replace")


def decode_link_info(data: bytes, names: Names, name: bytes = b"") -> tuple[int, Attachment]:
    """``(prog_id, attachment)`` from the bytes of one ``struct bpf_link_info``.

    ``name`` is the text behind the info's name pointer (:func:`name_request`), when it was
    fetched.  Bytes past the end (an older kernel's shorter struct) read as zero.
    """
    data = data.ljust(BPF_LINK_INFO_SIZE, b"\0")
    link_type, link_id, prog_id = _HEAD.unpack_from(data)
    kind = _KIND.get(link_type, f"link_type_{link_type}")
    attach_type = _IMPLIED_ATTACH_TYPE.get(link_type)
    text = _text(name)
    fields: dict[str, Any] = {}
    target = ""
    if link_type == LinkType.XDP:
        ifindex = _U32.unpack_from(data, 16)[0]
        target, fields = _device(ifindex, names, prog_id, None)
    elif link_type in (LinkType.TCX, LinkType.NETKIT):
        ifindex, at = _U32X2.unpack_from(data, 16)
        attach_type = attach_type_name(at)
        target, fields = _device(ifindex, names, prog_id, at)
        fields["direction"] = _DIRECTION.get(attach_type)
    elif link_type == LinkType.CGROUP:
        cgroup_id = _U64.unpack_from(data, 16)[0]
        attach_type = attach_type_name(_U32.unpack_from(data, 24)[0])
        target, fields = cgroup_target(cgroup_id, names)
    elif link_type == LinkType.NETNS:
        ino, at = _U32X2.unpack_from(data, 16)
        attach_type = attach_type_name(at)
        target = f"net:[{ino}]"
        fields = {"netns": ino}
    elif link_type == LinkType.TRACING:
        at, obj_id, btf_id = _U32X3.unpack_from(data, 16)
        attach_type = attach_type_name(at)
        if btf_id:
            target, target_prog = names.btf_function(prog_id, obj_id, btf_id)
            fields = {"target_prog_id": target_prog}
    elif link_type == LinkType.RAW_TRACEPOINT:
        target = text
    elif link_type == LinkType.ITER:
        target = text
        map_id = _U32.unpack_from(data, 28)[0]
        if map_id:
            fields = {"map_id": map_id}
    elif link_type in (LinkType.STRUCT_OPS, LinkType.SOCKMAP):
        map_id, at = _U32X2.unpack_from(data, 16)
        if link_type == LinkType.SOCKMAP:
            attach_type = attach_type_name(at)
        target = f"map {map_id}"
        fields = {"map_id": map_id}
    elif link_type == LinkType.NETFILTER:
        pf, hook, priority, _flags = _NETFILTER.unpack_from(data, 16)
        target = _netfilter_target(pf, hook)
        fields = {"priority": priority}
    elif link_type == LinkType.KPROBE_MULTI:
        count, flags = _U32X2.unpack_from(data, 24)
        ret = "kretprobe" if flags & _BPF_F_KPROBE_MULTI_RETURN else "kprobe"
        target = f"{ret}.multi {count} functions"
    elif link_type == LinkType.UPROBE_MULTI:
        count, flags, pid = _U32X3.unpack_from(data, 52)
        ret = "uretprobe" if flags & _BPF_F_UPROBE_MULTI_RETURN else "uprobe"
        target = f"{ret}.multi {text or '?'} ({count} offsets{f', pid {pid}' if pid else ''})"
    elif link_type == LinkType.PERF_EVENT:
        target, kind = _perf_event(data, text)
    return prog_id, Attachment(kind, "link", link_id, attach_type, target, **fields)


def cgroup_target(cgroup_id: int, names: Names) -> tuple[str, dict[str, Any]]:
    """The target text and the structured fields of an attachment to cgroup ``cgroup_id``:
    its path, and the container and pod the path names."""
    path = names.cgroup_path(cgroup_id) if cgroup_id else None
    fields: dict[str, Any] = {"cgroup_id": cgroup_id, "cgroup_path": path}
    if path:
        root = names.cgroup_root
        relative = path[len(root) :] if path.startswith(root) else path
        workload = workload_of_path(relative or "/")
        fields.update(
            container_id=workload.container_id,
            pod_uid=workload.pod_uid,
            qos_class=workload.qos_class,
        )
    return path or f"cgroup id {cgroup_id}", fields


def _device(
    ifindex: int, names: Names, prog_id: int, attach_type: int | None
) -> tuple[str, dict[str, Any]]:
    if not ifindex:
        # The device went away; the link stays until its holder closes it.
        return "detached", {"ifindex": None, "ifname": None}
    found = names.device(ifindex, prog_id, attach_type)
    if found is None:
        return f"if{ifindex}", {"ifindex": ifindex, "ifname": None}
    ifname, netns, target = found
    return target, {"ifindex": ifindex, "ifname": ifname, "netns": netns}


def _netfilter_target(pf: int, hook: int) -> str:
    proto = _NF_PROTO.get(pf, f"pf{pf}")
    hooks = _NF_NETDEV_HOOKS if pf == 5 else _NF_INET_HOOKS
    return f"{proto} {hooks[hook] if hook < len(hooks) else f'hook{hook}'}"


def _perf_event(data: bytes, text: str) -> tuple[str, str]:
    sub = _U32.unpack_from(data, 16)[0]
    kind = _PERF_KIND.get(sub, "perf_event")
    if sub in (PerfEventType.KPROBE, PerfEventType.KRETPROBE):
        offset = _U32.unpack_from(data, 36)[0]
        addr = _U64.unpack_from(data, 40)[0]
        ret = "kretprobe" if sub == PerfEventType.KRETPROBE else "kprobe"
        where = text or (f"{addr:#x}" if addr else "?")
        return f"{ret} {where}{f'+{offset:#x}' if offset else ''}", kind
    if sub in (PerfEventType.UPROBE, PerfEventType.URETPROBE):
        offset = _U32.unpack_from(data, 36)[0]
        ret = "uretprobe" if sub == PerfEventType.URETPROBE else "uprobe"
        return f"{ret} {text or '?'}+{offset:#x}", kind
    if sub == PerfEventType.TRACEPOINT:
        return text, kind
    if sub == PerfEventType.EVENT:
        config = _U64.unpack_from(data, 24)[0]
        event_type = _U32.unpack_from(data, 32)[0]
        return f"event type {event_type} config {config:#x}", kind
    return "", kind


def read_link_attachments(
    names: Names | None = None, errors: list[str] | None = None
) -> dict[int, list[Attachment]]:
    """Every program's attachments through BPF links: program id -> attachments in link id
    order.  A link that vanished during the walk is skipped; one that fails otherwise is
    reported in ``errors`` (when given).  Raises
    :class:`~otel_bpf.kernel.errors.BpfPermissionError` without the right to list links."""
    own_names = names is None
    names = names or Names()
    found: dict[int, list[Attachment]] = {}
    try:
        for link_id, data, name in _walk_links(errors):
            try:
                prog_id, attachment = decode_link_info(data, names, name)
            except (struct.error, ValueError) as err:
                if errors is not None:
                    errors.append(f"link {link_id}: {err}")
                continue
            found.setdefault(prog_id, []).append(attachment)
    finally:
        if own_names:
            names.close()
    return found


# Link types whose target may change after creation (detach, a device or cgroup going away,
# a map replaced): cached only where the iterator reports that target's state.
_MUTABLE_TARGET = frozenset(
    {
        LinkType.XDP,
        LinkType.TCX,
        LinkType.NETKIT,
        LinkType.CGROUP,
        LinkType.NETNS,
        LinkType.SOCKMAP,
        LinkType.STRUCT_OPS,
    }
)
# Link types whose decoding asks Names (an interface's or a cgroup's name, which a rename
# changes): their info is kept, and decoded again every walk.
_NAMED_TARGET = frozenset({LinkType.XDP, LinkType.TCX, LinkType.NETKIT, LinkType.CGROUP})


class _Known:
    """What one link's syscalls told the last time: the iterator's record it was read for,
    the info and name bytes, and their decoding with the name look-up's answer it used."""

    __slots__ = ("record", "data", "name", "decoded", "answer")

    def __init__(self, record: tuple[int, int, int], data: bytes, name: bytes) -> None:
        self.record = record
        self.data = data
        self.name = name
        self.decoded: tuple[int, Attachment] | str | None = None
        self.answer: tuple[Names, _Answer] | None = None


def _all_named(found: Mapping[int, Iterable[Attachment]]) -> bool:
    """Whether every cgroup and device of ``found`` has its name."""
    return all(
        (a.cgroup_path is not None or not a.cgroup_id) and (a.ifname is not None or not a.ifindex)
        for attachments in found.values()
        for a in attachments
    )


def _own_netns() -> int:
    """The inode of this process's network namespace (0 when it cannot be read)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


class _Answered:
    """A :class:`Names` whose interface or cgroup answer for the one link being decoded is
    already known: decoding then asks nothing twice."""

    __slots__ = ("_names", "_answer")

    def __init__(self, names: Names, answer: _Answer) -> None:
        self._names = names
        self._answer = answer

    @property
    def cgroup_root(self) -> str:
        return self._names.cgroup_root

    def device(
        self, ifindex: int, prog_id: int = 0, attach_type: int | None = None
    ) -> tuple[str, int, str] | None:
        return self._answer if isinstance(self._answer, tuple) else None

    def cgroup_path(self, cgroup_id: int) -> str | None:
        return self._answer if isinstance(self._answer, str) else None

    def btf_function(self, prog_id: int, obj_id: int, btf_id: int) -> tuple[str, int | None]:
        return self._names.btf_function(prog_id, obj_id, btf_id)


_Answer = str | tuple[str, int, str] | None
"""A cgroup's path, or a device's ``(name, netns inode, target)``, or None."""


def _name_answer(link_type: int, data: bytes, names: Names) -> _Answer:
    """What ``names`` says about the interface or cgroup of a link of the types in
    :data:`_NAMED_TARGET` (None for a detached one: then nothing is asked)."""
    if len(data) < BPF_LINK_INFO_SIZE:
        data = data.ljust(BPF_LINK_INFO_SIZE, b"\0")  # an older kernel's: as decoding reads it
    if link_type == LinkType.CGROUP:
        cgroup_id = _U64.unpack_from(data, 16)[0]
        return names.cgroup_path(cgroup_id) if cgroup_id else None
    ifindex, at = _U32X2.unpack_from(data, 16)
    if not ifindex:
        return None
    prog_id = _HEAD.unpack_from(data)[2]
    return names.device(ifindex, prog_id, None if link_type == LinkType.XDP else at)


def _decode(link_id: int, entry: _Known, names: Names) -> tuple[int, Attachment] | str:
    """What :func:`decode_link_info` makes of the entry, or the error text."""
    try:
        return decode_link_info(entry.data, names, entry.name)
    except (struct.error, ValueError) as err:
        return f"link {link_id}: {err}"


class LinkWalk:
    """The link walk of :func:`read_link_attachments`, with the same results, kept between
    walks: one read of an ``iter/bpf_link`` program (:mod:`otel_bpf.kernel.iterator.links`)
    lists every link's id, type, program and target state, and only the links that are new
    or whose record changed are asked about with syscalls (about 18 µs a link).

    Where the iterator cannot be loaded (a kernel before 5.19, no vmlinux BTF, a loader
    refused), every walk is the syscall walk.  Close it (or use ``with``).
    """

    def __init__(self, *, iterator: bool = True) -> None:
        self._use_iterator = iterator
        self._iterator: Any = None
        self._known: dict[int, _Known] = {}
        self._stateful: frozenset[int] = frozenset()
        # The last walk's iterator bytes and result, when every name in it was found.
        self._last: tuple[bytes, dict[int, list[Attachment]]] | None = None
        self._followed = False
        self.fetched = 0
        """How many links the last walk asked the kernel about one by one."""

    @property
    def fast(self) -> bool:
        """Whether the iterator is in use (known after the first walk)."""
        return self._iterator is not None

    @property
    def prog_ids(self) -> frozenset[int]:
        """The id of the iterator program this walk loaded (none before the first walk or
        without the iterator): the tool's own, not reported like the sampling iterators'."""
        return frozenset() if self._iterator is None else frozenset({self._iterator.prog_id})

    def read(
        self, names: Names | None = None, errors: list[str] | None = None
    ) -> dict[int, list[Attachment]]:
        """Program id -> attachments in link id order, as :func:`read_link_attachments`."""
        raw = self._read_raw()
        if raw is None:
            self._known.clear()
            self._last = None
            found = read_link_attachments(names, errors)
            self.fetched = sum(len(a) for a in found.values())
            return found
        if self._last is not None and self._last[0] == raw:
            # Every link, program, target, device name and namespace as last time: the same
            # attachments (a cgroup's path is known by its id, which never changes).
            self.fetched = 0
            return self._last[1]
        from otel_bpf.kernel.iterator.links import record_tuples

        own_names = names is None
        names = names or Names()
        walk_errors: list[str] = []
        try:
            found = self._walk(record_tuples(raw), names, walk_errors)
        finally:
            if own_names:
                names.close()
        if errors is not None:
            errors.extend(walk_errors)
        # Kept for the next walk only when complete: a name not found yet (a cgroup made a
        # moment ago) is asked again.
        complete = self._followed and not walk_errors and _all_named(found)
        self._last = (raw, found) if complete else None
        return found

    def _walk(
        self, records: Iterable[tuple[Any, ...]], names: Names, errors: list[str] | None
    ) -> dict[int, list[Attachment]]:
        found: dict[int, list[Attachment]] = {}
        known, kept = self._known, {}
        reader: _LinkReader | None = None
        stateful = self._stateful
        fetched = 0
        own_netns: int | None = None
        count = 0
        for link_id, link_type, prog_id, state, *where in sorted(records):
            count += 1
            record = (link_type, prog_id, state)
            entry = known.get(link_id)
            if entry is None or entry.record != record:
                reader = reader or _LinkReader()
                got = self._fetch(reader, link_id, errors)
                fetched += 1
                if got is None:
                    continue
                entry = _Known(record, *got)
            if link_type in _KIND and (link_type not in _MUTABLE_TARGET or link_type in stateful):
                kept[link_id] = entry  # else asked again next walk
            decoded = entry.decoded
            if link_type in _NAMED_TARGET:
                # Interface and cgroup names can change (a rename): asked every walk, and
                # decoded again only when the answer differs.
                if where and where[0] and state:
                    # The iterator named the device and its namespace: no namespace visit.
                    if own_netns is None:
                        own_netns = _own_netns()
                    netns, device = where[0], where[1]
                    target = device if netns == own_netns else f"{device}@netns:{netns}"
                    answer: tuple[Names, _Answer] = (names, (device, netns, target))
                else:
                    answer = (names, _name_answer(link_type, entry.data, names))
                if decoded is None or entry.answer != answer:
                    entry.answer = answer
                    decoded = _decode(link_id, entry, cast(Names, _Answered(*answer)))
            elif decoded is None:
                decoded = _decode(link_id, entry, names)
            entry.decoded = decoded
            if isinstance(decoded, str):
                if errors is not None:
                    errors.append(decoded)
                continue
            found.setdefault(decoded[0], []).append(decoded[1])
        self._known = kept
        self.fetched = fetched
        # Every link kept: none whose target the iterator cannot follow (netkit, a newer link
        # type) and none that failed, so the same bytes next time mean the same attachments.
        self._followed = len(kept) == count
        return found

    def _fetch(
        self, reader: _LinkReader, link_id: int, errors: list[str] | None
    ) -> tuple[bytes, bytes] | None:
        """Link ``link_id``'s info and name bytes, None when it is gone."""
        failures: list[str] = []
        got = reader.read(link_id, failures)
        if failures and reader.denied:
            raise BpfPermissionError(errno.EPERM, LIST_LINKS_PERMISSION_MESSAGE)
        if errors is not None:
            errors.extend(failures)
        return got

    def _read_raw(self) -> bytes | None:
        """The iterator's records of every link (``(id, type, prog_id, state, netns,
        device)`` each); None when there is no iterator (the syscall walk is used)."""
        if self._iterator is None:
            if not self._use_iterator:
                return None
            from otel_bpf.kernel.iterator.links import LinkIterator

            try:
                self._iterator = LinkIterator.open()
            except (BpfError, OSError) as err:
                self._use_iterator = False
                log.info("BPF links are read one by one (no iter/bpf_link program: %s)", err)
                return None
            self._stateful = frozenset(self._iterator.layout.chains)
        try:
            raw: bytes = self._iterator.read_raw()
        except (BpfError, OSError) as err:
            log.debug("iter/bpf_link read failed, this walk is the syscall walk: %s", err)
            return None
        return raw

    def close(self) -> None:
        """Release the iterator."""
        self._last = None
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
        self._known.clear()

    def __enter__(self) -> LinkWalk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _walk_links(errors: list[str] | None) -> Iterable[tuple[int, bytes, bytes]]:
    """``(link id, info bytes, name bytes)`` of every link, in id order."""
    id_attr = GetIdAttr()
    next_args = prepared(Cmd.LINK_GET_NEXT_ID, id_attr)
    reader = _LinkReader()
    while True:
        if (ret := raw_bpf(next_args)) < 0:
            if -ret == errno.ENOENT:
                return
            if -ret in (errno.EPERM, errno.EACCES):
                raise BpfPermissionError(-ret, LIST_LINKS_PERMISSION_MESSAGE)
            raise command_error(-ret, Cmd.LINK_GET_NEXT_ID)
        link_id = id_attr.start_id = id_attr.next_id
        id_attr.next_id = 0
        got = reader.read(link_id, errors)
        if got is not None:
            yield link_id, got[0], got[1]


class _LinkReader:
    """Reads one link's info by id: fd, info (and name), close, with the attr buffers made
    once for every link of a walk."""

    def __init__(self) -> None:
        self._id = GetIdAttr()
        self._fd_args = prepared(Cmd.LINK_GET_FD_BY_ID, self._id)
        self._buf = ctypes.create_string_buffer(BPF_LINK_INFO_SIZE)
        self._info = InfoByFdAttr(info=ctypes.addressof(self._buf))
        self._info_args = prepared(Cmd.OBJ_GET_INFO_BY_FD, self._info)
        self.denied = False
        """The last fd-by-id call was refused for want of a privilege."""

    def read(self, link_id: int, errors: list[str] | None) -> tuple[bytes, bytes] | None:
        """``(info bytes, name bytes)`` of link ``link_id``; None when it is gone (or failed:
        reported in ``errors``)."""
        self._id.start_id = link_id
        if (fd := raw_bpf(self._fd_args)) < 0:
            self.denied = fd in (-errno.EPERM, -errno.EACCES)
            if fd != -errno.ENOENT and errors is not None:
                errors.append(f"link {link_id}: {command_error(-fd, Cmd.LINK_GET_FD_BY_ID)}")
            return None
        try:
            buf, info = self._buf, self._info
            ctypes.memset(buf, 0, BPF_LINK_INFO_SIZE)
            info.bpf_fd, info.info_len = fd, BPF_LINK_INFO_SIZE
            if (ret := raw_bpf(self._info_args)) < 0:
                if ret != -errno.ENOENT and errors is not None:
                    err = command_error(-ret, Cmd.OBJ_GET_INFO_BY_FD, "link info")
                    errors.append(f"link {link_id}: {err}")
                return None
            raw = buf.raw
            data = raw[: info.info_len]
            if name_request(raw) is None:
                return data, b""
            return _link_name(fd, data, raw)
        finally:
            close(fd)


def _link_name(fd: int, data: bytes, raw: bytes) -> tuple[bytes, bytes]:
    """The info of link ``fd`` again, with the text behind its name pointer (a second call,
    for the link types that have one); ``data`` alone when that call fails."""
    request = name_request(raw)
    assert request is not None
    buf = ctypes.create_string_buffer(BPF_LINK_INFO_SIZE)
    ptr_off, len_off, size = request
    for _attempt in range(2):
        name = ctypes.create_string_buffer(size)
        ctypes.memset(buf, 0, BPF_LINK_INFO_SIZE)
        # perf_event's type stays: the kernel reads the name fields of that type.
        struct.pack_into("<I", buf, 16, _U32.unpack_from(data, 16)[0] if len(data) > 16 else 0)
        struct.pack_into("<Q", buf, ptr_off, ctypes.addressof(name))
        struct.pack_into("<I", buf, len_off, size)
        attr = InfoByFdAttr(bpf_fd=fd, info_len=BPF_LINK_INFO_SIZE, info=ctypes.addressof(buf))
        try:
            bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, "link info")
        except BpfError as err:
            if err.errno == errno.ENOSPC and size < _PATH_SIZE:
                size = _PATH_SIZE
                continue
            # The name is an extra: the first call's info still says where it is attached.
            return data, b""
        return buf.raw[: attr.info_len], name.raw
    return data, b""
