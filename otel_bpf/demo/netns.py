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

# linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/veth.h
NETLINK_ROUTE = 0
NLMSG_ERROR = 2
RTM_NEWLINK = 16
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLA_F_NESTED = 0x8000
IFLA_IFNAME = 3
IFLA_LINKINFO = 18
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
VETH_INFO_PEER = 1
# XDP attach modes (link_create.flags for BPF_XDP) and the attach type itself.
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
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


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("HH", length, kind) + payload + b"\0" * (-length % 4)


def _ifinfomsg() -> bytes:
    # family, pad, type, index, flags, change
    return struct.pack("BxHiII", socket.AF_UNSPEC, 0, 0, 0, 0)


def create_veth(name: str, peer: str) -> None:
    """Create a veth pair ``name`` <-> ``peer`` in the current namespace (rtnetlink)."""
    peer_info = _ifinfomsg() + _attr(IFLA_IFNAME, peer.encode() + b"\0")
    linkinfo = _attr(IFLA_INFO_KIND, b"veth") + _attr(
        IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER | NLA_F_NESTED, peer_info)
    )
    body = (
        _ifinfomsg()
        + _attr(IFLA_IFNAME, name.encode() + b"\0")
        + _attr(IFLA_LINKINFO | NLA_F_NESTED, linkinfo)
    )
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    msg = struct.pack("IHHII", 16 + len(body), RTM_NEWLINK, flags, 1, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE) as nl:
        nl.bind((0, 0))
        nl.send(msg)
        reply = nl.recv(65536)
    _, kind, _, _, _ = struct.unpack_from("IHHII", reply)
    if kind != NLMSG_ERROR:
        raise NetnsError(errno.EPROTO, f"creating veth {name}: unexpected netlink reply {kind}")
    (err,) = struct.unpack_from("i", reply, 16)
    if err != 0:
        raise NetnsError(-err, f"creating veth {name}/{peer}: {os.strerror(-err)}")


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
    flags = XDP_FLAGS_SKB_MODE if generic else XDP_FLAGS_DRV_MODE
    return create_owned_link(prog, ifindex(ifname), BPF_XDP, flags)
