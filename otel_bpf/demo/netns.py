"""A private network namespace for the calling process: unshare, links up, a veth pair.

Everything created here lives in the new namespace, so it disappears with the last process
in it; attaching XDP or tc programs there never disturbs the host's interfaces.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import socket
import struct

from otel_bpf.kernel import netlink as nl
from otel_bpf.kernel.fd import KernelFd
from otel_bpf.kernel.links import create_owned_link
from otel_bpf.kernel.syscall import libc

CLONE_NEWNET = 0x40000000

# linux/sockios.h
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFHWADDR = 0x8927
IFF_UP = 0x1
IFNAMSIZ = 16

# linux/veth.h
VETH_INFO_PEER = 1
BPF_XDP = 37


class NetnsError(OSError):
    """Creating the namespace or one of its interfaces failed."""


def unshare_net() -> None:
    """Move the calling process into a new, empty network namespace.

    Needs CAP_SYS_ADMIN.  Only the calling thread moves, so call it before starting threads.
    """
    if libc.unshare(CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM:
            raise NetnsError(err, "unshare(CLONE_NEWNET): permission denied, needs CAP_SYS_ADMIN")
        raise NetnsError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")


def disable_ipv6() -> None:
    """Turn IPv6 off in the current namespace, for interfaces that exist and that come later.

    A new interface otherwise sends router and neighbour solicitations on its own, which
    would run any program attached to its peer.  Without IPv6 in the kernel there is
    nothing to do.
    """
    for scope in ("default", "all"):
        path = f"/proc/sys/net/ipv6/conf/{scope}/disable_ipv6"
        try:
            with open(path, "w") as f:
                f.write("1")
        except FileNotFoundError:
            return


def set_link_up(ifname: str) -> None:
    """Set IFF_UP on ``ifname`` (``ip link set IFNAME up``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack(f"{IFNAMSIZ}sH22x", ifname.encode(), 0)
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req)
            (flags,) = struct.unpack_from("H", res, IFNAMSIZ)
            req = struct.pack(f"{IFNAMSIZ}sH22x", ifname.encode(), flags | IFF_UP)
            fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, req)
        except OSError as err:
            raise NetnsError(err.errno, f"bringing {ifname} up: {err.strerror}") from None


def _ifinfomsg(index: int = 0) -> bytes:
    # family, pad, type, index, flags, change
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, 0, 0)


def _request(kind: int, body: bytes, what: str, flags: int = 0) -> None:
    try:
        with nl.RouteSocket() as sock:
            sock.request(kind, body, flags)
    except OSError as err:
        raise NetnsError(err.errno or errno.EPROTO, f"{what}: {err.strerror or err}") from None


def create_veth(name: str, peer: str) -> None:
    """Create a veth pair ``name`` <-> ``peer`` in the current namespace (rtnetlink)."""
    peer_info = _ifinfomsg() + nl.attr(nl.IFLA_IFNAME, peer.encode() + b"\0")
    linkinfo = nl.attr(nl.IFLA_INFO_KIND, b"veth") + nl.attr(
        nl.IFLA_INFO_DATA | nl.NLA_F_NESTED, nl.attr(VETH_INFO_PEER | nl.NLA_F_NESTED, peer_info)
    )
    body = (
        _ifinfomsg()
        + nl.attr(nl.IFLA_IFNAME, name.encode() + b"\0")
        + nl.attr(nl.IFLA_LINKINFO | nl.NLA_F_NESTED, linkinfo)
    )
    flags = nl.NLM_F_CREATE | nl.NLM_F_EXCL
    _request(nl.RTM_NEWLINK, body, f"creating veth {name}/{peer}", flags)


def set_xdp(prog: KernelFd | int | None, ifname: str, *, generic: bool = True) -> None:
    """Attach an XDP program to ``ifname`` without a link (rtnetlink ``IFLA_XDP``, as
    ``ip link set dev IFNAME xdpgeneric fd FD`` does); None detaches the one there.  It stays
    until detached, or until the interface goes."""
    fd = -1 if prog is None else (prog if isinstance(prog, int) else prog.fileno())
    flags = nl.XDP_FLAGS_SKB_MODE if generic else nl.XDP_FLAGS_DRV_MODE
    xdp = nl.attr(nl.IFLA_XDP_FD, struct.pack("=i", fd)) + nl.attr(
        nl.IFLA_XDP_FLAGS, struct.pack("=I", flags)
    )
    body = _ifinfomsg(ifindex(ifname)) + nl.attr(nl.IFLA_XDP | nl.NLA_F_NESTED, xdp)
    _request(nl.RTM_SETLINK, body, f"setting XDP on {ifname}")


def _tcmsg(ifname: str, handle: int, parent: int, info: int = 0) -> bytes:
    return struct.pack("=BxxxiIII", socket.AF_UNSPEC, ifindex(ifname), handle, parent, info)


def add_clsact(ifname: str) -> None:
    """Give ``ifname`` a clsact qdisc (``tc qdisc add dev IFNAME clsact``)."""
    body = _tcmsg(ifname, nl.tc_handle(nl.TC_H_CLSACT, 0), nl.TC_H_CLSACT) + nl.attr(
        nl.TCA_KIND, b"clsact\0"
    )
    _request(nl.RTM_NEWQDISC, body, f"adding clsact to {ifname}", nl.NLM_F_CREATE | nl.NLM_F_EXCL)


def _filter_info(priority: int) -> int:
    # tcm_info: the priority in the upper half, the protocol (network order) in the lower.
    return (priority << 16) | socket.htons(nl.ETH_P_ALL)


def _hook(ingress: bool) -> int:
    return nl.TC_INGRESS_PARENT if ingress else nl.TC_EGRESS_PARENT


def add_bpf_filter(
    prog: KernelFd | int, ifname: str, *, ingress: bool, priority: int, name: str = "otel"
) -> None:
    """A direct-action ``cls_bpf`` filter on ``ifname``'s clsact hook
    (``tc filter add dev IFNAME ingress|egress prio P bpf da fd FD``)."""
    fd = prog if isinstance(prog, int) else prog.fileno()
    options = (
        nl.attr(nl.TCA_BPF_FD, struct.pack("=I", fd))
        + nl.attr(nl.TCA_BPF_NAME, name.encode() + b"\0")
        + nl.attr(nl.TCA_BPF_FLAGS, struct.pack("=I", nl.TCA_BPF_FLAG_ACT_DIRECT))
    )
    body = (
        _tcmsg(ifname, 1, _hook(ingress), _filter_info(priority))
        + nl.attr(nl.TCA_KIND, b"bpf\0")
        + nl.attr(nl.TCA_OPTIONS | nl.NLA_F_NESTED, options)
    )
    flags = nl.NLM_F_CREATE | nl.NLM_F_EXCL
    _request(nl.RTM_NEWTFILTER, body, f"adding a bpf filter to {ifname}", flags)


def delete_filters(ifname: str, *, ingress: bool, priority: int) -> None:
    """Remove the filters of ``priority`` from ``ifname``'s clsact hook."""
    body = _tcmsg(ifname, 0, _hook(ingress), _filter_info(priority))
    _request(nl.RTM_DELTFILTER, body, f"deleting filters of {ifname}")


def ifindex(ifname: str) -> int:
    """The interface index of ``ifname`` in the current namespace."""
    return socket.if_nametoindex(ifname)


def mac_address(ifname: str) -> bytes:
    """The 6-byte hardware address of ``ifname``.

    Asked with an ioctl: /sys/class/net shows the namespace sysfs was mounted in, not ours.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack(f"{IFNAMSIZ}s24x", ifname.encode())
        res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
    # struct sockaddr: sa_family (2 bytes), then the address.
    return bytes(res[IFNAMSIZ + 2 : IFNAMSIZ + 8])


def attach_xdp(prog: KernelFd | int, ifname: str, *, generic: bool = True) -> KernelFd:
    """Attach an XDP program to ``ifname`` through a BPF link; returns the link.

    Generic (SKB) mode by default, which every driver supports.  The link goes away with
    its fd, or with the interface when the namespace is destroyed.
    """
    flags = nl.XDP_FLAGS_SKB_MODE if generic else nl.XDP_FLAGS_DRV_MODE
    return create_owned_link(prog, ifindex(ifname), BPF_XDP, flags)
