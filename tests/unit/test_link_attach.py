"""Decoding ``struct bpf_link_info`` per link type, from hand-built bytes (no privileges)."""

from __future__ import annotations

import ctypes
import json
import struct
from pathlib import Path

import pytest

from otel_bpf.cli import jsonl
from otel_bpf.kernel import attach
from otel_bpf.kernel._uapi import (
    ATTACH_TYPE_NAMES,
    BPF_LINK_INFO_SIZE,
    AttachType,
    LinkType,
    PerfEventType,
    attach_type_name,
)
from otel_bpf.kernel.attach import Names, decode_link_info, name_request
from otel_bpf.kernel.attach_discovery import AttachmentDiscovery, DiscoveryContext, Source
from otel_bpf.kernel.record_builder import RecordExtras, program_record
from otel_bpf.records import Attachment


class FakeNames(Names):
    """Answers from dicts instead of the host."""

    def __init__(self) -> None:
        super().__init__(cgroup_root="/sys/fs/cgroup")
        self.ifnames = {1: "lo", 7: "eth0"}
        self.cgroups = {4242: "/sys/fs/cgroup/kubepods.slice/pod1", 4343: CONTAINER_CGROUP}
        self.functions = {(1, 5000): "tcp_v4_connect"}
        self.calls: list[tuple[int, int, int]] = []

    def ifname(self, ifindex: int, prog_id: int = 0, attach_type: int | None = None) -> str | None:
        return self.ifnames.get(ifindex)

    def device(
        self, ifindex: int, prog_id: int = 0, attach_type: int | None = None
    ) -> tuple[str, int, str] | None:
        name = self.ifnames.get(ifindex)
        return None if name is None else (name, OWN_NETNS, name)

    def cgroup_path(self, cgroup_id: int) -> str | None:
        return self.cgroups.get(cgroup_id)

    def btf_function(self, prog_id: int, obj_id: int, btf_id: int) -> tuple[str, int | None]:
        self.calls.append((prog_id, obj_id, btf_id))
        name = self.functions.get((obj_id, btf_id))
        return (name, None) if name else (f"prog {obj_id} btf_id {btf_id}", obj_id)


OWN_NETNS = 4026531840
POD_UID = "0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5"
CONTAINER_ID = "ab" * 32
CONTAINER_CGROUP = (
    "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{CONTAINER_ID}.scope"
)


def info(link_type: int, link_id: int, prog_id: int, union: bytes = b"") -> bytes:
    """A filled ``bpf_link_info``: head, 4 bytes of padding, then the union at 16."""
    data = struct.pack("<III4x", link_type, link_id, prog_id) + union
    assert len(data) <= BPF_LINK_INFO_SIZE
    return data.ljust(BPF_LINK_INFO_SIZE, b"\0")


def decode(data: bytes, name: bytes = b"") -> tuple[int, Attachment]:
    return decode_link_info(data, FakeNames(), name)


def test_attach_type_names_follow_the_kernel_enum() -> None:
    # Spot checks against include/uapi/linux/bpf.h.
    assert attach_type_name(0) == "cgroup_inet_ingress"
    assert attach_type_name(AttachType.TRACE_RAW_TP) == "trace_raw_tp"
    assert attach_type_name(AttachType.TRACE_FENTRY) == "trace_fentry"
    assert attach_type_name(AttachType.TRACE_ITER) == "trace_iter"
    assert attach_type_name(36) == "sk_lookup"
    assert attach_type_name(AttachType.XDP) == "xdp"
    assert attach_type_name(AttachType.TCX_INGRESS) == "tcx_ingress"
    assert attach_type_name(AttachType.TCX_EGRESS) == "tcx_egress"
    assert attach_type_name(54) == "netkit_primary"
    assert attach_type_name(57) == "trace_uprobe_session"
    assert attach_type_name(len(ATTACH_TYPE_NAMES)) == f"type_{len(ATTACH_TYPE_NAMES)}"


def test_xdp_link_names_the_interface() -> None:
    prog_id, a = decode(info(LinkType.XDP, 3, 41, struct.pack("<I", 1)))
    assert prog_id == 41
    assert a == Attachment("xdp", "link", 3, "xdp", "lo", ifindex=1, ifname="lo", netns=OWN_NETNS)


def test_xdp_link_on_an_interface_not_in_our_namespace() -> None:
    _, a = decode(info(LinkType.XDP, 3, 41, struct.pack("<I", 99)))
    assert (a.target, a.ifindex, a.ifname) == ("if99", 99, None)


def test_xdp_link_whose_device_is_gone() -> None:
    _, a = decode(info(LinkType.XDP, 3, 41, struct.pack("<I", 0)))
    assert (a.target, a.ifindex) == ("detached", None)


@pytest.mark.parametrize(
    ("link_type", "at", "kind", "direction"),
    [
        (LinkType.TCX, AttachType.TCX_INGRESS, "tcx", "ingress"),
        (LinkType.TCX, AttachType.TCX_EGRESS, "tcx", "egress"),
        (LinkType.NETKIT, 54, "netkit", "primary"),
        (LinkType.NETKIT, 55, "netkit", "peer"),
    ],
)
def test_tcx_and_netkit_links(link_type: int, at: int, kind: str, direction: str) -> None:
    _, a = decode(info(link_type, 8, 50, struct.pack("<II", 7, at)))
    assert (a.kind, a.attach_type, a.target, a.ifindex, a.ifname, a.direction) == (
        kind,
        ATTACH_TYPE_NAMES[at],
        "eth0",
        7,
        "eth0",
        direction,
    )


def test_cgroup_link_names_the_directory() -> None:
    # cgroup_id is a u64 at 16, attach_type a u32 at 24.
    _, a = decode(info(LinkType.CGROUP, 9, 60, struct.pack("<QI", 4242, 1)))
    assert a == Attachment(
        "cgroup",
        "link",
        9,
        "cgroup_inet_egress",
        "/sys/fs/cgroup/kubepods.slice/pod1",
        cgroup_id=4242,
        cgroup_path="/sys/fs/cgroup/kubepods.slice/pod1",
    )


def test_cgroup_link_names_the_container_and_pod_of_its_cgroup() -> None:
    _, a = decode(info(LinkType.CGROUP, 9, 60, struct.pack("<QI", 4343, 0)))
    assert (a.target, a.cgroup_path) == (CONTAINER_CGROUP, CONTAINER_CGROUP)
    assert (a.container_id, a.pod_uid, a.qos_class) == (CONTAINER_ID, POD_UID, "burstable")
    assert jsonl._attachments((a,))[0]["pod_uid"] == POD_UID


def test_cgroup_link_to_an_unknown_cgroup() -> None:
    _, a = decode(info(LinkType.CGROUP, 9, 60, struct.pack("<QI", 1 << 40, 10)))
    assert (a.target, a.cgroup_id, a.cgroup_path, a.attach_type) == (
        f"cgroup id {1 << 40}",
        1 << 40,
        None,
        "cgroup_inet4_connect",
    )


def test_netns_link() -> None:
    _, a = decode(info(LinkType.NETNS, 2, 70, struct.pack("<II", 4026531840, 36)))
    assert (a.kind, a.attach_type, a.target, a.netns) == (
        "netns",
        "sk_lookup",
        "net:[4026531840]",
        4026531840,
    )


def test_tracing_link_into_vmlinux() -> None:
    names = FakeNames()
    data = info(LinkType.TRACING, 4, 80, struct.pack("<III4xQ", 24, 1, 5000, 0))
    prog_id, a = decode_link_info(data, names)
    assert names.calls == [(80, 1, 5000)]
    assert (prog_id, a.kind, a.attach_type, a.target, a.target_prog_id) == (
        80,
        "tracing",
        "trace_fentry",
        "tcp_v4_connect",
        None,
    )


def test_tracing_link_into_another_program() -> None:
    _, a = decode(info(LinkType.TRACING, 4, 80, struct.pack("<III", 25, 33, 2)))
    assert (a.attach_type, a.target, a.target_prog_id) == ("trace_fexit", "prog 33 btf_id 2", 33)


def test_tracing_link_before_target_ids() -> None:
    # Before 5.13 only attach_type was filled: no target to look up.
    names = FakeNames()
    _, a = decode_link_info(info(LinkType.TRACING, 4, 80, struct.pack("<I", 27)), names)
    assert (a.attach_type, a.target, names.calls) == ("lsm_mac", "", [])


def test_raw_tracepoint_link_takes_the_fetched_name() -> None:
    data = info(LinkType.RAW_TRACEPOINT, 5, 90, struct.pack("<QI", 0, 10))
    assert name_request(data) == (16, 24, 512)
    _, a = decode(data, b"sys_enter\0garbage")
    assert (a.kind, a.attach_type, a.target) == ("raw_tracepoint", "trace_raw_tp", "sys_enter")


def test_iter_link() -> None:
    data = info(LinkType.ITER, 6, 91, struct.pack("<QII", 0, 9, 17))
    assert name_request(data) == (16, 24, 512)
    _, a = decode(data, b"bpf_map_elem\0")
    assert (a.kind, a.attach_type, a.target, a.map_id) == ("iter", "trace_iter", "bpf_map_elem", 17)


def test_struct_ops_and_sockmap_links() -> None:
    _, a = decode(info(LinkType.STRUCT_OPS, 7, 92, struct.pack("<I", 12)))
    assert (a.kind, a.attach_type, a.target, a.map_id) == ("struct_ops", "struct_ops", "map 12", 12)
    _, a = decode(info(LinkType.SOCKMAP, 7, 92, struct.pack("<II", 13, 38)))
    assert (a.kind, a.attach_type, a.map_id) == ("sockmap", "sk_skb_verdict", 13)


def test_netfilter_link() -> None:
    # pf 2 (NFPROTO_IPV4), hook 1 (NF_INET_LOCAL_IN), priority -128 (signed).
    _, a = decode(info(LinkType.NETFILTER, 10, 93, struct.pack("<IIiI", 2, 1, -128, 0)))
    assert (a.kind, a.attach_type, a.target, a.priority) == (
        "netfilter",
        "netfilter",
        "ipv4 input",
        -128,
    )
    _, a = decode(info(LinkType.NETFILTER, 10, 93, struct.pack("<IIiI", 5, 0, 3, 0)))
    assert a.target == "netdev ingress"


def test_kprobe_multi_link() -> None:
    data = info(LinkType.KPROBE_MULTI, 11, 94, struct.pack("<QIIQQ", 0, 3, 1, 0, 0))
    assert name_request(data) is None
    _, a = decode(data)
    assert (a.kind, a.attach_type, a.target) == (
        "kprobe",
        "trace_kprobe_multi",
        "kretprobe.multi 3 functions",
    )


def test_uprobe_multi_link() -> None:
    union = struct.pack("<QQQQIIII", 0, 0, 0, 0, 20, 2, 0, 1234)
    data = info(LinkType.UPROBE_MULTI, 12, 95, union)
    assert name_request(data) == (16, 48, 4096)
    _, a = decode(data, b"/usr/bin/bash\0")
    assert (a.kind, a.target) == ("uprobe", "uprobe.multi /usr/bin/bash (2 offsets, pid 1234)")


def test_perf_event_links() -> None:
    kprobe = info(
        LinkType.PERF_EVENT,
        13,
        96,
        struct.pack("<I4xQIIQQQ", PerfEventType.KRETPROBE, 0, 12, 4, 0, 0, 0),
    )
    assert name_request(kprobe) == (24, 32, 512)
    _, a = decode(kprobe, b"do_sys_openat2\0")
    assert (a.kind, a.attach_type, a.target) == (
        "kprobe",
        "perf_event",
        "kretprobe do_sys_openat2+0x4",
    )
    tp = info(LinkType.PERF_EVENT, 14, 96, struct.pack("<I4xQI", PerfEventType.TRACEPOINT, 0, 20))
    _, a = decode(tp, b"sched_switch\0")
    assert (a.kind, a.target) == ("tracepoint", "sched_switch")
    up = info(
        LinkType.PERF_EVENT, 15, 96, struct.pack("<I4xQII", PerfEventType.UPROBE, 0, 10, 0x40)
    )
    assert name_request(up) == (24, 32, 4096)
    _, a = decode(up, b"/bin/true\0")
    assert (a.kind, a.target) == ("uprobe", "uprobe /bin/true+0x40")
    ev = info(LinkType.PERF_EVENT, 16, 96, struct.pack("<I4xQI", PerfEventType.EVENT, 3, 1))
    assert name_request(ev) is None
    _, a = decode(ev)
    assert (a.kind, a.target) == ("perf_event", "event type 1 config 0x3")


def test_unknown_link_type_is_kept() -> None:
    prog_id, a = decode(info(99, 17, 97, b"\xff" * 8))
    assert (prog_id, a.kind, a.attach_type, a.target) == (97, "link_type_99", None, "")


def test_short_info_from_an_older_kernel_reads_as_zero() -> None:
    # A 5.8 kernel fills only the head and the cgroup fields it had.
    data = struct.pack("<III4xQ", LinkType.CGROUP, 9, 60, 4242)
    _, a = decode(data)
    assert (a.cgroup_id, a.attach_type) == (4242, "cgroup_inet_ingress")


def test_names_scan_finds_a_cgroup_by_inode(tmp_path: Path) -> None:
    root = tmp_path
    (root / "a" / "b").mkdir(parents=True)
    ino = (root / "a" / "b").stat().st_ino
    names = Names(str(root))
    assert names.cgroup_path(ino) == f"{root}/a/b"
    # Unknown ids do not rescan more than once a second.
    assert names.cgroup_path(1 << 60) is None


def test_names_ifname_of_loopback() -> None:
    assert Names().ifname(1) == "lo"
    assert Names().ifname(1 << 30) is None


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_link_attachments_cadence() -> None:
    clock = Clock()
    found = {1: [Attachment("xdp", "link", 5, "xdp", "lo", ifindex=1, ifname="lo")]}
    cache = AttachmentDiscovery(
        10.0, sources=[Source("links", lambda c: found)], clock=clock, names=FakeNames()
    )
    assert cache.get(dict.fromkeys([1, 2], "xdp")) == {1: tuple(found[1])}
    assert cache.walks == 1
    clock.now += 9.9
    cache.get(dict.fromkeys([1, 2], "xdp"))
    assert cache.walks == 1  # within the interval, same programs: the last walk's result
    cache.get(dict.fromkeys([1, 2, 3], "xdp"))
    assert cache.walks == 2  # a program appeared: walked at once
    clock.now += 5
    cache.get(dict.fromkeys([2, 1, 3], "xdp"))
    assert cache.walks == 2
    clock.now += 5
    cache.get(dict.fromkeys([1, 2, 3], "xdp"))
    assert cache.walks == 3  # 10 s since the last walk


def test_link_attachments_keeps_last_result_when_a_walk_fails() -> None:
    from otel_bpf.kernel.errors import BpfPermissionError

    calls = []

    def read(ctx: DiscoveryContext) -> dict[int, list[Attachment]]:
        calls.append(1)
        if len(calls) > 1:
            raise BpfPermissionError(1, "denied")
        ctx.errors.append("link 9: gone wrong")
        return {1: [Attachment("iter", "link", 2, "trace_iter", "bpf_prog")]}

    cache = AttachmentDiscovery(
        10.0, sources=[Source("links", read)], clock=Clock(), names=FakeNames()
    )
    errors: list[str] = []
    first = cache.get({1: "tracing"}, errors)
    assert errors == ["link 9: gone wrong"]
    errors.clear()
    assert cache.get({1: "tracing", 2: "xdp"}, errors) == first
    assert errors and errors[0].startswith("attachments from links: ")


def test_record_extras_attach_attachments() -> None:
    r = program_record(1, "xdp", 6, "name", "ab" * 8, 100, 4, 0, 1.5e9, 0, 12, 96, 80, (), 9, None)
    extras = RecordExtras()
    where = {1: (Attachment("xdp", "link", 5, "xdp", "lo", ifindex=1, ifname="lo"),)}
    (out,) = extras.attach([r], None, None, where)
    assert out.attachments == where[1] and out.owners is None
    (again,) = extras.attach([r], None, None, dict(where))
    assert again is out  # unchanged: the very same record
    (none,) = extras.attach([r], None, None, {})
    assert none.attachments == ()
    (unasked,) = extras.attach([r], None, None, None)
    assert unasked.attachments is None


def test_json_attachments_key() -> None:
    a = Attachment("cgroup", "link", 9, "cgroup_inet_egress", "/sys/fs/cgroup/x\x1b[2J",
                   cgroup_id=4242, cgroup_path="/sys/fs/cgroup/x\x1b[2J")  # fmt: skip
    objs = jsonl._attachments((a,))
    assert objs == [
        {
            "kind": "cgroup",
            "via": "link",
            "link_id": 9,
            "attach_type": "cgroup_inet_egress",
            "target": "/sys/fs/cgroup/x\x1b[2J",
            "cgroup_id": 4242,
            "cgroup_path": "/sys/fs/cgroup/x\x1b[2J",
        }
    ]
    assert jsonl._attachments(None) is None
    assert jsonl._attachments(()) == []
    line = jsonl.encode({"attachments": objs})
    assert "\x1b" not in line and json.loads(line)["attachments"] == objs
    assert jsonl.FIELDS[-1] == "attachments"


def test_link_info_size_matches_the_union() -> None:
    # The largest union members (perf_event, uprobe_multi) end at byte 64.
    assert BPF_LINK_INFO_SIZE == 64
    assert ctypes.sizeof(ctypes.c_uint64) * 8 == BPF_LINK_INFO_SIZE
    assert attach.DISCOVERY_INTERVAL == 10.0


def test_decorator_adds_attachments_only_when_asked() -> None:
    from otel_bpf.kernel.decorate import Decorator
    from otel_bpf.kernel.source import SourceOptions

    clock = Clock()
    where = {1: [Attachment("xdp", "link", 5, "xdp", "lo", ifindex=1, ifname="lo")]}
    cache = AttachmentDiscovery(
        10.0, sources=[Source("links", lambda c: where)], clock=clock, names=FakeNames()
    )
    decorator = Decorator(lambda: {}, cache)
    records = [
        program_record(i, "xdp", 6, "n", "ab" * 8, 0, 0, 0, 1.5e9, 0, 1, 2, 3, (), 0, None)
        for i in (1, 2)
    ]
    assert decorator.decorate(records, [], SourceOptions()) is records
    assert cache.walks == 0
    one, two = decorator.decorate(records, [], SourceOptions(attachments=True))
    assert one.attachments == tuple(where[1]) and two.attachments == ()
    assert one.owners is None and one.maps is None
    decorator.decorate(records, [], SourceOptions(attachments=True))
    assert cache.walks == 1  # the per-second pass reuses the last walk


def test_a_failing_source_is_left_out_with_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from otel_bpf.kernel.errors import BpfPermissionError

    link = Attachment("cgroup", "link", 3, "cgroup_inet_ingress", "/sys/fs/cgroup/a")
    seen: list[dict[int, list[Attachment]]] = []
    failing = [True]

    def query(ctx: DiscoveryContext) -> dict[int, list[Attachment]]:
        seen.append({p: list(a) for p, a in ctx.found.items()})
        if failing[0]:
            raise PermissionError(1, "setns: Operation not permitted")
        return {2: [Attachment("cgroup", "prog_attach", None, "cgroup_inet_egress", "/x")]}

    def denied(ctx: DiscoveryContext) -> dict[int, list[Attachment]]:
        raise BpfPermissionError(1, "denied")

    clock = Clock()
    discovery = AttachmentDiscovery(
        10.0,
        sources=[Source("links", lambda c: {1: [link]}), Source("query", query)],
        clock=clock,
        names=FakeNames(),
    )
    caplog.set_level(logging.INFO, logger="otel_bpf.attach")
    for _ in range(3):
        clock.now += 10
        errors: list[str] = []
        assert discovery.get({1: "cgroup_skb", 2: "cgroup_skb"}, errors) == {1: (link,)}
        assert errors == ["attachments from query: [Errno 1] setns: Operation not permitted"]
    # Later sources see what the earlier ones found.
    assert seen[0] == {1: [link]}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "from query" in warnings[0].getMessage()
    failing[0] = False
    clock.now += 10
    assert discovery.get({1: "cgroup_skb", 2: "cgroup_skb"})[2][0].via == "prog_attach"
    assert "reported again" in caplog.records[-1].getMessage()
    assert discovery.walks == 4
    broken = AttachmentDiscovery(sources=[Source("links", denied)], names=FakeNames())
    assert broken.get({1: "xdp"}) == {}
