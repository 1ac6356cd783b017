"""rtnetlink parsing and the netlink attach-point source, on hand-built messages (no
privileges): IFLA_XDP in each mode, cls_bpf filters, act_bpf actions, truncated and hostile
replies, error replies, and the per-namespace interface names with fake namespace visits."""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
from collections.abc import Iterator

import pytest

from otel_bpf.kernel import attach_netlink as an
from otel_bpf.kernel import netlink as nl
from otel_bpf.kernel._uapi import AttachType, LinkType
from otel_bpf.kernel.attach import Names, decode_link_info
from otel_bpf.kernel.attach_discovery import DiscoveryContext, default_sources
from otel_bpf.records import Attachment

A = nl.attr


def nest(kind: int, *attrs: bytes) -> bytes:
    return A(kind | nl.NLA_F_NESTED, b"".join(attrs))


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def link_msg(ifindex: int, name: bytes, *attrs: bytes) -> bytes:
    return (
        struct.pack("=BxHiII", 0, 1, ifindex, 0, 0)
        + A(nl.IFLA_IFNAME, name + b"\0")
        + b"".join(attrs)
    )


def tcmsg(ifindex: int, parent: int, priority: int, handle: int = 1) -> bytes:
    info = (priority << 16) | socket.htons(nl.ETH_P_ALL)
    return struct.pack("=BxxxiIII", 0, ifindex, handle, parent, info)


def act_bpf(prog_id: int, index: int, order: int = 1) -> bytes:
    parms = struct.pack("=IIiii", index, 0, 3, 1, 1)  # struct tc_act_bpf
    options = nest(
        nl.TCA_ACT_OPTIONS, A(nl.TCA_ACT_BPF_PARMS, parms), A(nl.TCA_ACT_BPF_ID, u32(prog_id))
    )
    return nest(order, A(nl.TCA_ACT_KIND, b"bpf\0"), options)


def cls_bpf(ifindex: int, parent: int, priority: int, prog_id: int, *actions: bytes) -> bytes:
    opts = [A(nl.TCA_BPF_NAME, b"x.o:[tc]\0"), A(nl.TCA_BPF_ID, u32(prog_id))]
    if actions:
        opts.append(nest(nl.TCA_BPF_ACT, *actions))
    return tcmsg(ifindex, parent, priority) + A(nl.TCA_KIND, b"bpf\0") + nest(nl.TCA_OPTIONS, *opts)


# --- attributes and messages -------------------------------------------------------------


def test_rtattrs_walk_nested_attributes() -> None:
    xdp = nest(nl.IFLA_XDP, A(nl.IFLA_XDP_ATTACHED, b"\x02"), A(nl.IFLA_XDP_SKB_PROG_ID, u32(77)))
    data = A(nl.IFLA_IFNAME, b"lo\0") + xdp
    walked = list(nl.rtattrs(data))
    assert [k for k, _ in walked] == [nl.IFLA_IFNAME, nl.IFLA_XDP]  # the nested flag is masked
    assert list(nl.rtattrs(walked[1][1])) == [(2, b"\x02"), (6, u32(77))]


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\x00\x01\x00",  # a length running past the end
        b"\x02\x00\x01\x00",  # a length shorter than the header
        b"\x08\x00",  # a header cut short
        b"",
    ],
)
def test_rtattrs_stop_at_a_hostile_length(data: bytes) -> None:
    assert list(nl.rtattrs(data)) == []
    assert nl.attr_map(data) == {}
    # What came before the bad attribute is still given.
    assert list(nl.rtattrs(A(3, b"ok\0") + data)) == [(3, b"ok\0\0")[:1] + (b"ok\0",)]


def test_attr_map_keeps_the_first_of_each_and_only_the_wanted() -> None:
    data = A(3, b"a\0") + A(3, b"b\0") + A(4, u32(1))
    assert nl.attr_map(data) == {3: b"a\0", 4: u32(1)}
    assert nl.attr_map(data, 0, {4}) == {4: u32(1)}
    assert nl.u32(b"\x01") is None and nl.u32(None) is None
    assert nl.text(b"eth0\0junk") == "eth0" and nl.text(b"\xff\xfe") == "\ufffd\ufffd"


def test_messages_with_hostile_lengths_end_the_datagram() -> None:
    good = struct.pack("=IHHII", 20, 16, 2, 7, 0) + b"abcd"
    bad = struct.pack("=IHHII", 9999, 16, 2, 7, 0)
    assert list(nl.parse_messages(good + bad)) == [(16, 2, 7, b"abcd")]
    assert list(nl.parse_messages(struct.pack("=IHHII", 3, 16, 0, 7, 0))) == []
    assert list(nl.parse_messages(b"\x10\x00")) == []


# --- the socket, fed by a fake kernel ----------------------------------------------------


class FakeKernel:
    """Stands for the netlink socket: each ``recvmsg_into`` gives the next datagram."""

    def __init__(self, datagrams: list[tuple[bytes, int, int]] | None = None) -> None:
        self.sent: list[bytes] = []
        self.datagrams = datagrams or []
        self.endless: bytes | None = None

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        return len(data)

    def settimeout(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass

    def recvmsg_into(
        self, buffers: list[bytearray], ancbufsize: int = 0, flags: int = 0
    ) -> tuple[int, list[object], int, tuple[int, int]]:
        if self.datagrams:
            data, flags, sender = self.datagrams.pop(0)
        elif self.endless is not None:
            data, flags, sender = self.endless, 0, 0
        else:
            raise TimeoutError
        buffers[0][: len(data)] = data
        return len(data), [], flags, (sender, 0)


def msg(kind: int, payload: bytes, seq: int = 1, flags: int = nl.NLM_F_MULTI) -> bytes:
    raw = struct.pack("=IHHII", 16 + len(payload), kind, flags, seq, 0) + payload
    return raw + b"\0" * (-len(raw) % 4)


def done(seq: int = 1, code: int = 0) -> bytes:
    return msg(nl.NLMSG_DONE, struct.pack("=i", code), seq)


def error(code: int, seq: int = 1) -> bytes:
    return msg(nl.NLMSG_ERROR, struct.pack("=i", code) + b"\0" * 16, seq, 0)


def route(kernel: FakeKernel, **bounds: int) -> nl.RouteSocket:
    return nl.RouteSocket(sock=kernel, timeout=0.5, **bounds)  # type: ignore[arg-type]


def test_a_dump_keeps_its_own_messages_until_done() -> None:
    kernel = FakeKernel(
        [
            (msg(16, b"late", seq=0) + msg(16, b"one"), 0, 0),  # a late answer is dropped
            (msg(16, b"forged"), 0, 4242),  # not from the kernel (port 0): dropped
            (msg(16, b"two") + done(), 0, 0),
        ]
    )
    messages = route(kernel).dump(nl.RTM_GETLINK, b"body")
    assert [m.payload for m in messages] == [b"one", b"two"]
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", kernel.sent[0])
    assert (length, kind, flags, seq) == (20, nl.RTM_GETLINK, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 1)


def test_error_replies_raise_with_the_kernels_errno() -> None:
    with pytest.raises(nl.NetlinkError) as err:
        route(FakeKernel([(error(-errno.EPERM), 0, 0)])).dump(nl.RTM_GETTFILTER, b"")
    assert err.value.errno == errno.EPERM
    with pytest.raises(nl.NetlinkError) as err:
        route(FakeKernel([(done(code=-errno.EINTR), 0, 0)])).dump(nl.RTM_GETLINK, b"")
    assert err.value.errno == errno.EINTR
    # An acknowledgement (error 0) ends a request; a refusal raises.
    route(FakeKernel([(error(0), 0, 0)])).request(nl.RTM_NEWLINK, b"")
    with pytest.raises(nl.NetlinkError) as err:
        route(FakeKernel([(error(-errno.EEXIST), 0, 0)])).request(nl.RTM_NEWLINK, b"")
    assert err.value.errno == errno.EEXIST


def test_a_reply_that_never_ends_is_bounded() -> None:
    kernel = FakeKernel()
    kernel.endless = msg(16, b"x" * 64) * 10
    with pytest.raises(nl.NetlinkError) as err:
        route(kernel, max_messages=1000).dump(nl.RTM_GETLINK, b"")
    assert err.value.errno == errno.E2BIG
    with pytest.raises(nl.NetlinkError) as err:
        route(kernel, max_bytes=10_000).dump(nl.RTM_GETLINK, b"")
    assert err.value.errno == errno.E2BIG
    # Silence (no DONE ever) times out.
    with pytest.raises(nl.NetlinkError) as err:
        route(FakeKernel([(msg(16, b"one"), 0, 0)])).dump(nl.RTM_GETLINK, b"")
    assert err.value.errno == errno.ETIMEDOUT
    # A datagram cut by the buffer is refused, not half read.
    with pytest.raises(nl.NetlinkError) as err:
        route(FakeKernel([(msg(16, b"one"), socket.MSG_TRUNC, 0)])).dump(nl.RTM_GETLINK, b"")
    assert err.value.errno == errno.EMSGSIZE


def test_sequence_numbers_go_up_per_request() -> None:
    kernel = FakeKernel([(done(1), 0, 0), (done(2), 0, 0)])
    sock = route(kernel)
    sock.dump(nl.RTM_GETLINK, b"")
    sock.dump(nl.RTM_GETLINK, b"")
    assert [struct.unpack_from("=I", s, 8)[0] for s in kernel.sent] == [1, 2]


# --- IFLA_XDP, filters, actions ----------------------------------------------------------


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ([A(2, b"\x02"), A(6, u32(11)), A(4, u32(11))], (("skb", 11),)),
        ([A(2, b"\x01"), A(5, u32(12)), A(4, u32(12))], (("drv", 12),)),
        ([A(2, b"\x03"), A(7, u32(13)), A(4, u32(13))], (("hw", 13),)),
        # Two modes at once: IFLA_XDP_ATTACHED says multi, each mode has its own id.
        ([A(2, b"\x04"), A(5, u32(21)), A(6, u32(22))], (("drv", 21), ("skb", 22))),
        # Only the attached mode and IFLA_XDP_PROG_ID (what older kernels give).
        ([A(2, b"\x02"), A(4, u32(14))], (("skb", 14),)),
        ([A(2, b"\x00")], ()),
        ([A(2, b"\x09"), A(4, u32(15))], ()),  # a mode this version does not know
        ([A(2, b""), A(6, b"\x01")], ()),  # values cut short
    ],
)
def test_ifla_xdp_modes(attrs: list[bytes], expected: tuple[tuple[str, int], ...]) -> None:
    assert an.parse_xdp(b"".join(attrs)) == expected


def test_parse_link() -> None:
    linkinfo = nest(nl.IFLA_LINKINFO, A(nl.IFLA_INFO_KIND, b"netkit\0"))
    xdp = nest(nl.IFLA_XDP, A(2, b"\x02"), A(6, u32(5)))
    payload = link_msg(7, b"nk0", A(4, u32(1500)), linkinfo, xdp)
    assert an.parse_link(payload) == an.Device(7, "nk0", "netkit", (("skb", 5),))
    assert an.parse_link(link_msg(2, b"eth0")) == an.Device(2, "eth0")
    assert an.parse_link(payload[:10]) is None  # shorter than ifinfomsg
    assert an.parse_link(struct.pack("=BxHiII", 0, 1, 3, 0, 0)) is None  # no name
    # A name is untrusted text: kept raw, whatever it holds.
    assert an.parse_link(link_msg(4, b"\x1b[31mx")) == an.Device(4, "\x1b[31mx")


def test_cls_bpf_filter_and_its_bpf_actions() -> None:
    head = tcmsg(3, nl.TC_INGRESS_PARENT, 1, handle=0) + A(nl.TCA_KIND, b"bpf\0")
    assert an.parse_filter(head) == []  # a priority's head message: no filter
    payload = cls_bpf(3, nl.TC_INGRESS_PARENT, 49152, 31, act_bpf(32, 5))
    assert an.parse_filter(payload) == [
        an.TcProgram(31, 3, nl.TC_INGRESS_PARENT, 49152),
        an.TcProgram(32, 3, nl.TC_INGRESS_PARENT, 49152, action_index=5),
    ]
    # act_bpf under a matchall filter (its actions are attribute 2).
    matchall = (
        tcmsg(3, nl.TC_EGRESS_PARENT, 2)
        + A(nl.TCA_KIND, b"matchall\0")
        + nest(nl.TCA_OPTIONS, nest(2, act_bpf(40, 9)))
    )
    assert an.parse_filter(matchall) == [an.TcProgram(40, 3, nl.TC_EGRESS_PARENT, 2, 9)]
    # A filter of a kind we do not read, a truncated one, a bpf filter without an id.
    assert an.parse_filter(tcmsg(3, 0, 1) + A(nl.TCA_KIND, b"u32\0") + nest(2, A(1, u32(7)))) == []
    assert an.parse_filter(payload[:12]) == []
    # Cut short: the options no longer fit in the message, so nothing is read from them.
    assert an.parse_filter(payload[:-8]) == []


def test_action_dump() -> None:
    payload = b"\0" * 4 + nest(nl.TCA_ACT_TAB, act_bpf(50, 1, 1), act_bpf(51, 2, 2)) + A(3, u32(2))
    assert an.parse_action_dump(payload) == [
        an.TcProgram(50, action_index=1),
        an.TcProgram(51, action_index=2),
    ]
    other = nest(1, A(nl.TCA_ACT_KIND, b"gact\0"), nest(2, A(1, b"x")))
    assert an.parse_action_dump(b"\0" * 4 + nest(nl.TCA_ACT_TAB, other)) == []
    assert an.parse_action_dump(b"\0\0") == []


def test_filter_parents_from_the_qdiscs() -> None:
    qdiscs = [
        (2, 0, nl.TC_H_ROOT, "noqueue"),
        (2, 0xFFFF0000, nl.TC_H_CLSACT, "clsact"),
        (3, 0x10000, nl.TC_H_ROOT, "htb"),
        (3, 0xFFFF0000, nl.TC_H_INGRESS, "ingress"),
        (4, 0, nl.TC_H_ROOT, "mq"),
        (4, 0, 0x1, "fq_codel"),  # under mq, without a handle: takes no filter
        (5, 0, nl.TC_H_ROOT, "fq_codel"),
    ]
    assert an.filter_parents(qdiscs) == {
        2: [nl.TC_INGRESS_PARENT, nl.TC_EGRESS_PARENT],
        3: [0x10000, nl.TC_INGRESS_PARENT],
        5: [0],
    }
    assert an.parse_qdisc(tcmsg(2, nl.TC_H_CLSACT, 0) + A(nl.TCA_KIND, b"clsact\0")) == (
        2, 1, nl.TC_H_CLSACT, "clsact",
    )  # fmt: skip
    assert an.parse_qdisc(b"\0" * 8) is None


# --- from scans to attachments -----------------------------------------------------------

OWN, OTHER = 4026531840, 4026532280


def scans() -> dict[int, an.NamespaceScan]:
    own = an.NamespaceScan(
        OWN,
        True,
        {1: an.Device(1, "lo"), 2: an.Device(2, "eth0", None, (("drv", 70),))},
        [an.TcProgram(80, 2, nl.TC_EGRESS_PARENT, 3), an.TcProgram(81, action_index=4)],
    )
    other = an.NamespaceScan(
        OTHER,
        False,
        {
            1: an.Device(1, "lo"),
            2: an.Device(2, "veth0", "veth", (("skb", 71),)),
            3: an.Device(3, "veth1", "veth", (("skb", 72),)),
        },
        [an.TcProgram(82, 3, nl.TC_INGRESS_PARENT, 1), an.TcProgram(83, 9, 0x10000, 2)],
        {(2, int(AttachType.TCX_INGRESS)): frozenset({90})},
    )
    return {OWN: own, OTHER: other}


def test_netlink_attachments_name_devices_per_namespace() -> None:
    linked = {
        72: [Attachment("xdp", "link", 5, "xdp", "veth1@netns:4026532280", ifindex=3, netns=OTHER)]
    }
    found = an.netlink_attachments(scans().values(), linked)
    assert found == {
        70: [
            Attachment(
                "xdp", "netlink", None, "xdp", "eth0", ifindex=2, ifname="eth0", netns=OWN,
                mode="drv",
            )
        ],
        71: [
            Attachment(
                "xdp", "netlink", None, "xdp", f"veth0@netns:{OTHER}",
                ifindex=2, ifname="veth0", netns=OTHER, mode="skb",
            )
        ],
        # 72 is held by a link: not reported again.
        80: [
            Attachment(
                "tc", "netlink", None, None, "eth0", ifindex=2, ifname="eth0", netns=OWN,
                direction="egress", priority=3,
            )
        ],
        81: [Attachment("tc", "netlink", None, None, "action 4", netns=OWN)],
        82: [
            Attachment(
                "tc", "netlink", None, None, f"veth1@netns:{OTHER}", ifindex=3, ifname="veth1",
                netns=OTHER, direction="ingress", priority=1,
            )
        ],
        83: [
            Attachment(
                "tc", "netlink", None, None, f"if9@netns:{OTHER}", ifindex=9, netns=OTHER,
                priority=2,
            )
        ],
    }  # fmt: skip


def test_the_same_xdp_program_on_the_same_index_elsewhere_is_still_reported() -> None:
    # The link holds 72 on index 3 of OWN; index 3 of OTHER runs it too, through netlink.
    linked = {72: [Attachment("xdp", "link", 5, "xdp", "x", ifindex=3, netns=OWN)]}
    assert [a.netns for a in an.netlink_attachments(scans().values(), linked)[72]] == [OTHER]


class ScannedNames(Names):
    """Names whose namespace visits are the given scans; ``visits`` lists each namespace
    visited."""

    def __init__(self, visits: list[int]) -> None:
        super().__init__(cgroup_root="/sys/fs/cgroup")
        self.visits = visits

    def _scan(self, *, own_only: bool) -> dict[int, an.NamespaceScan]:
        known = self._scans or {}
        found = {i: s for i, s in scans().items() if i == OWN or not own_only}
        self.visits.extend(i for i in found if i not in known)
        return {**found, **{i: s for i, s in known.items() if i in found}}


def link_info(link_type: int, prog_id: int, union: bytes) -> bytes:
    return struct.pack("<III4x", link_type, 6, prog_id) + union


def test_link_devices_are_named_in_the_namespace_that_runs_the_program() -> None:
    visits: list[int] = []
    names = ScannedNames(visits)
    names.new_discovery(["xdp", "sched_cls"])
    # Index 2 here is eth0, which runs 70, not 71: 71 runs on index 2 of the other namespace.
    _, xdp = decode_link_info(link_info(LinkType.XDP, 71, struct.pack("<I", 2)), names)
    assert (xdp.target, xdp.ifname, xdp.netns) == (f"veth0@netns:{OTHER}", "veth0", OTHER)
    _, here = decode_link_info(link_info(LinkType.XDP, 70, struct.pack("<I", 2)), names)
    assert (here.target, here.ifname, here.netns) == ("eth0", "eth0", OWN)
    tcx = struct.pack("<II", 2, AttachType.TCX_INGRESS)
    _, t = decode_link_info(link_info(LinkType.TCX, 90, tcx), names)
    assert (t.target, t.ifname, t.netns, t.direction) == (
        f"veth0@netns:{OTHER}",
        "veth0",
        OTHER,
        "ingress",
    )
    # Nowhere: the index alone.
    _, lost = decode_link_info(link_info(LinkType.XDP, 99, struct.pack("<I", 2)), names)
    assert (lost.target, lost.ifname, lost.netns) == ("if2", None, None)
    assert names.ifname(2, 71) is None  # not in this namespace
    assert names.ifname(2, 70) == "eth0" and names.ifname(1) == "lo"
    assert visits == [OWN, OTHER]  # each namespace visited once per discovery
    names.new_discovery()
    assert names.device(1) == ("lo", OWN, "lo")
    assert visits == [OWN, OTHER, OWN]  # the own one alone is enough for that


def test_source_order_and_the_netlink_source() -> None:
    order = [s.name for s in default_sources()]
    assert order[0] == "links" and order[-1] == "netlink"
    netlink = default_sources()[-1]
    names = ScannedNames([])
    names.new_discovery()
    ctx = DiscoveryContext(names, {70: "xdp"})
    assert set(netlink.read(ctx)) == {70, 71, 72, 80, 81, 82, 83}
    # Nothing loaded could be attached through netlink: no visit at all.
    assert netlink.read(DiscoveryContext(names := ScannedNames([]), {1: "cgroup_skb"})) == {}
    assert names.visits == []


def test_scan_wants_follow_the_loaded_types() -> None:
    assert an.ScanWants.for_types(["xdp"]) == an.ScanWants(tc=False, actions=False, query=False)
    assert an.ScanWants.for_types(["sched_cls"]) == an.ScanWants(tc=True, actions=False, query=True)
    assert an.ScanWants.for_types(["sched_act"]) == an.ScanWants(tc=True, actions=True, query=False)


@pytest.fixture
def fresh_warning(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(an, "_warned", False)
    yield


def test_a_namespace_that_may_not_be_entered_is_left_out_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_warning: None
) -> None:
    def scan(inode: int, own: bool, wants: an.ScanWants) -> an.NamespaceScan:
        return an.NamespaceScan(inode, own, {1: an.Device(1, "lo")})

    outcomes: dict[int, object] = {
        2: PermissionError(errno.EPERM, "setns(CLONE_NEWNET): Operation not permitted"),
        3: FileNotFoundError(errno.ENOENT, "gone"),
        5: ValueError("a reply nothing here expected"),
    }

    def visit(paths: dict[int, str], work: object) -> dict[int, object]:
        return {ino: outcomes.get(ino, an.NamespaceScan(ino, False)) for ino in paths}

    monkeypatch.setattr(an, "scan_namespace", scan)
    monkeypatch.setattr(an.nl, "in_network_namespaces", visit)
    spaces = {1: "/proc/self/ns/net", 2: "/proc/2/ns/net", 3: "/proc/3/ns/net", 4: "/run/netns/x"}
    spaces[5] = "/proc/5/ns/net"
    with caplog.at_level(logging.WARNING, logger="otel_bpf.attach"):
        for _ in range(3):
            found = an.scan_namespaces(an.ScanWants(), spaces)
            assert list(found) == [1, 4]  # the rest still visited
    warnings = [r for r in caplog.records if r.name == "otel_bpf.attach"]
    assert len(warnings) == 1, warnings
    assert "network namespace 2 is not visited" in warnings[0].getMessage()


def test_a_worker_that_does_not_finish_leaves_the_own_namespace(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, fresh_warning: None
) -> None:
    def visit(paths: dict[int, str], work: object) -> dict[int, object]:
        raise nl.NetlinkError(errno.ETIMEDOUT, "network namespaces: no answer in 10s")

    monkeypatch.setattr(an, "scan_namespace", lambda i, own, w: an.NamespaceScan(i, own))
    monkeypatch.setattr(an.nl, "in_network_namespaces", visit)
    with caplog.at_level(logging.WARNING, logger="otel_bpf.attach"):
        found = an.scan_namespaces(an.ScanWants(), {1: "/proc/self/ns/net", 2: "/proc/2/ns/net"})
    assert list(found) == [1]
    assert len(caplog.records) == 1


def test_the_worker_thread_enters_namespaces_and_the_caller_stays() -> None:
    own = os.stat("/proc/thread-self/ns/net").st_ino
    found = nl.in_network_namespaces(
        {"self": "/proc/self/ns/net", "missing": "/nonexistent/ns"},
        lambda key: os.stat("/proc/thread-self/ns/net").st_ino,
    )
    assert isinstance(found["missing"], FileNotFoundError)
    # Entering needs CAP_SYS_ADMIN: as root the worker is in it, otherwise it is refused.
    assert found["self"] == own or isinstance(found["self"], PermissionError)
    assert os.stat("/proc/thread-self/ns/net").st_ino == own
    with pytest.raises(FileNotFoundError):
        nl.in_network_namespace("/nonexistent/ns", lambda: 1)


def test_the_own_namespace_is_queried_only_for_what_a_link_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[int, int]] = []

    def query(ifindex: int, attach_type: int) -> frozenset[int]:
        asked.append((ifindex, attach_type))
        return frozenset({90}) if ifindex == 2 else frozenset()

    monkeypatch.setattr(an, "_queried", query)
    own = an.NamespaceScan(OWN, True, {2: an.Device(2, "eth0")}, query_later=True)
    ingress = int(AttachType.TCX_INGRESS)
    assert own.runs(2, 90, ingress) and not own.runs(2, 91, ingress)
    assert not own.runs(3, 90, ingress)
    assert asked == [(2, ingress), (3, ingress)]  # once each
    # Another namespace's devices were queried at the visit: nothing is asked later.
    assert not scans()[OTHER].runs(3, 90, ingress)
    assert asked == [(2, ingress), (3, ingress)]


def test_namespace_visits_started_ahead_are_taken_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    calls: list[tuple[bool, bool, str]] = []
    release = threading.Event()

    def fake_scan(
        wants: an.ScanWants,
        namespaces: object = None,
        *,
        own_only: bool = False,
        known: object = None,
    ) -> dict[int, an.NamespaceScan]:
        calls.append((own_only, wants.query, threading.current_thread().name))
        release.wait(5)
        found = scans()
        return {OWN: found[OWN]} if own_only else found

    monkeypatch.setattr(an, "scan_namespaces", fake_scan)
    names = Names(cgroup_root="/sys/fs/cgroup")
    names.new_discovery(["xdp", "sched_cls"])
    names.start_namespace_scans()
    names.start_namespace_scans()  # already started: one visit
    release.set()
    assert set(names.namespace_scans()) == {OWN, OTHER}
    assert names.namespace_scans() is names.namespace_scans()
    # One visit, in a thread of its own, not asking the devices (the iterator names links).
    assert calls == [(False, False, "otel-bpf-netns-visits")]
    # A link's device named by asking (the syscall walk): visited again, asking the devices.
    calls.clear()
    assert names.device(2, 71, None) == ("veth0", OTHER, f"veth0@netns:{OTHER}")
    assert [c[:2] for c in calls] == [(True, True), (False, True)]


def test_namespace_visits_that_fail_ahead_are_made_again_by_the_caller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import threading

    threads: list[str] = []

    def fake_scan(
        wants: an.ScanWants,
        namespaces: object = None,
        *,
        own_only: bool = False,
        known: object = None,
    ) -> dict[int, an.NamespaceScan]:
        threads.append(threading.current_thread().name)
        if len(threads) == 1:
            raise OSError(5, "no reply")
        return scans()

    monkeypatch.setattr(an, "scan_namespaces", fake_scan)
    names = Names(cgroup_root="/sys/fs/cgroup")
    names.new_discovery(["xdp"])
    names.start_namespace_scans()
    assert set(names.namespace_scans()) == {OWN, OTHER}
    assert threads == ["otel-bpf-netns-visits", threading.current_thread().name]
    # A new discovery never leaves the last one's visits running.
    names.start_namespace_scans()
    names.new_discovery(["xdp"])
    assert names._prefetch is None
