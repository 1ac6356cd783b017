"""The ``prog_attach`` and ``perf_event`` attachment sources with the kernel faked: which
attach types are queried for which loaded program types, leaving to the links what they
already report, and decoding ``BPF_TASK_FD_QUERY`` answers.

kprobes and tracepoints cannot be created on the test machines (no kprobes, no tracefs), so
their ``BPF_TASK_FD_QUERY`` answers are constructed here; a real uprobe is read back in
tests/kernel/test_prog_attach_attachments.py."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

from otel_bpf.cli import jsonl
from otel_bpf.kernel import attach_query
from otel_bpf.kernel._uapi import ATTACH_TYPE_NAMES, BPF_F_ALLOW_MULTI, TaskFdType
from otel_bpf.kernel.attach import Names
from otel_bpf.kernel.attach_discovery import DiscoveryContext, default_sources
from otel_bpf.kernel.attach_query import (
    CGROUP_ATTACH_TYPES,
    NETNS_ATTACH_TYPES,
    SOCKMAP_ATTACH_TYPES,
    PerfEventSource,
    ProgAttachSource,
    QueryError,
    attach_flags_name,
    attach_types_for,
    decode_task_fd_query,
    prog_attach_only,
)
from otel_bpf.records import Attachment

POD_UID = "0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5"
CONTAINER_ID = "ab" * 32
ROOT = "/sys/fs/cgroup"
POD_CGROUP = (
    f"{ROOT}/kubepods.slice/kubepods-besteffort.slice/"
    f"kubepods-besteffort-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{CONTAINER_ID}.scope"
)


class FakeNames(Names):
    def __init__(self) -> None:
        super().__init__(cgroup_root=ROOT)
        self.cgroups = {1: ROOT, 50: POD_CGROUP}

    def cgroup_path(self, cgroup_id: int) -> str | None:
        return self.cgroups.get(cgroup_id)


def at(name: str) -> int:
    return ATTACH_TYPE_NAMES.index(name)


def names(types: list[int]) -> list[str]:
    return [ATTACH_TYPE_NAMES[t] for t in types]


def test_sources_run_after_the_links_in_order() -> None:
    order = [s.name for s in default_sources()]
    assert order[0] == "links"
    assert order.index("links") < order.index("prog_attach") < order.index("perf_event")


def test_attach_types_only_for_the_loaded_program_types() -> None:
    assert attach_types_for({1: "socket_filter", 2: "xdp"}, CGROUP_ATTACH_TYPES) == []
    assert names(attach_types_for({1: "cgroup_skb"}, CGROUP_ATTACH_TYPES)) == [
        "cgroup_inet_ingress",
        "cgroup_inet_egress",
    ]
    both = attach_types_for(
        {1: "cgroup_device", 2: "cgroup_skb", 3: "cgroup_skb"}, CGROUP_ATTACH_TYPES
    )
    assert names(both) == ["cgroup_inet_ingress", "cgroup_inet_egress", "cgroup_device"]
    assert names(attach_types_for({1: "lsm"}, CGROUP_ATTACH_TYPES)) == ["lsm_cgroup"]
    assert len(attach_types_for({1: "cgroup_sock_addr"}, CGROUP_ATTACH_TYPES)) == 17
    assert names(attach_types_for({1: "sock_ops", 2: "cgroup_sockopt"}, CGROUP_ATTACH_TYPES)) == [
        "cgroup_sock_ops",
        "cgroup_getsockopt",
        "cgroup_setsockopt",
    ]
    # sk_lookup is attached by link only: no namespace query for it.
    assert attach_types_for({1: "sk_lookup"}, NETNS_ATTACH_TYPES) == []
    assert names(attach_types_for({1: "flow_dissector"}, NETNS_ATTACH_TYPES)) == ["flow_dissector"]
    assert names(attach_types_for({1: "sk_msg"}, SOCKMAP_ATTACH_TYPES)) == ["sk_msg_verdict"]
    assert names(attach_types_for({1: "sk_skb"}, SOCKMAP_ATTACH_TYPES)) == [
        "sk_skb_stream_parser",
        "sk_skb_stream_verdict",
        "sk_skb_verdict",
    ]
    # Every name of the tables is one the kernel has.
    for table in (CGROUP_ATTACH_TYPES, NETNS_ATTACH_TYPES, SOCKMAP_ATTACH_TYPES):
        assert all(n in ATTACH_TYPE_NAMES for ns in table.values() for n in ns)


def test_attach_flags_names() -> None:
    assert attach_flags_name(BPF_F_ALLOW_MULTI) == "multi"
    assert attach_flags_name(1) == "override"
    assert attach_flags_name(0) is None


def cg(via: str, prog_at: str, cgroup_id: int = 50, link_id: int | None = None) -> Attachment:
    return Attachment("cgroup", via, link_id, prog_at, "x", cgroup_id=cgroup_id)


def test_a_hook_held_by_a_link_is_left_to_the_link() -> None:
    egress = "cgroup_inet_egress"
    found = {
        7: [cg("link", egress, link_id=3)],
        8: [cg("link", egress, link_id=4)],
        9: [cg("link", egress, cgroup_id=51, link_id=5), cg("link", "cgroup_inet_ingress")],
    }
    queried = [
        # 7 is attached both ways: listed twice, reported once more.
        (7, cg("prog_attach", egress)),
        (7, cg("prog_attach", egress)),
        # 8 by its link only.
        (8, cg("prog_attach", egress)),
        # 9's links are on another cgroup and another attach type.
        (9, cg("prog_attach", egress)),
        (10, cg("prog_attach", egress)),
    ]
    assert prog_attach_only(queried, found) == {
        7: [cg("prog_attach", egress)],
        9: [cg("prog_attach", egress)],
        10: [cg("prog_attach", egress)],
    }
    # Only links take a listing away; another source's report of the hook does not.
    assert prog_attach_only([(8, cg("prog_attach", egress))], {8: [cg("netlink", egress)]}) == {
        8: [cg("prog_attach", egress)]
    }
    sock = Attachment("sockmap", "link", 2, "sk_msg_verdict", "map 4", map_id=4)
    mine = Attachment("sockmap", "prog_attach", None, "sk_msg_verdict", "map 4", map_id=4)
    other_map = Attachment("sockmap", "prog_attach", None, "sk_msg_verdict", "map 5", map_id=5)
    assert prog_attach_only([(3, mine), (3, other_map)], {3: [sock]}) == {3: [other_map]}
    ns = Attachment("netns", "link", 2, "flow_dissector", "net:[9]", netns=9)
    by_attach = Attachment("netns", "prog_attach", None, "flow_dissector", "net:[9]", netns=9)
    assert prog_attach_only([(3, by_attach)], {3: [ns]}) == {}


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> dict[tuple[str, int], tuple[list[int], int]]:
    """(target, attach type) -> (program ids, attach flags) the fake queries answer; the
    targets are cgroups (``cg<id>``), namespaces (``ns<inode>``) and maps (``map<id>``)."""
    answers: dict[tuple[str, int], tuple[list[int], int]] = {}
    fds: dict[int, str] = {}

    def opened(target: str) -> int:
        fd = os.open(os.devnull, os.O_RDONLY)
        fds[fd] = target
        return fd

    def walk(root: str) -> Iterator[tuple[int, int, str]]:
        assert root == ROOT
        # The walk closes its own fds: these are never opened.
        fds.update({-1: "cg1", -50: "cg50"})
        yield -1, 1, ROOT
        yield -50, 50, POD_CGROUP

    def query(fd: int, attach_type: int) -> tuple[list[int], int]:
        if attach_type == at("cgroup_unix_connect"):
            raise QueryError(errno.EINVAL, "an attach type this kernel does not know")
        if attach_type == at("cgroup_inet4_bind") and fd == -50:
            raise QueryError(errno.ENOMEM, "Cannot allocate memory")
        if attach_type == at("cgroup_inet6_bind") and fd == -50:
            raise QueryError(errno.ENOENT, "gone since listed")
        if attach_type == at("sk_skb_stream_verdict"):
            raise QueryError(errno.EBUSY, "the map has an sk_skb_verdict program instead")
        return answers.get((fds[fd], attach_type), ([], 0))

    def open_map(map_id: int) -> tuple[int, int]:
        return opened(f"map{map_id}"), 15 if map_id == 4 else 1

    real_open = os.open

    def open_ns(path: str, flags: int, *args: int) -> int:
        if path.startswith("/fake/ns/"):
            return opened("ns" + path.rsplit("/", 1)[1])
        return real_open(path, flags, *args)

    monkeypatch.setattr(attach_query, "walk_cgroups", walk)
    monkeypatch.setattr(attach_query, "Querier", lambda: query)
    monkeypatch.setattr(attach_query, "_map_ids", lambda: iter([3, 4]))
    monkeypatch.setattr(attach_query, "_open_map", open_map)
    monkeypatch.setattr(
        attach_query, "network_namespaces", lambda: {9: "/fake/ns/9", 10: "/fake/ns/10"}
    )
    monkeypatch.setattr(attach_query.os, "open", open_ns)
    return answers


def test_prog_attach_source_reads_the_loaded_types_hooks(
    fake_kernel: dict[tuple[str, int], tuple[list[int], int]],
) -> None:
    egress, ingress = at("cgroup_inet_egress"), at("cgroup_inet_ingress")
    fake_kernel[("cg50", egress)] = ([7, 8], BPF_F_ALLOW_MULTI)
    fake_kernel[("cg1", ingress)] = ([8], 0)
    fake_kernel[("ns10", at("flow_dissector"))] = ([11], 0)
    fake_kernel[("map4", at("sk_msg_verdict"))] = ([12], 0)
    source = ProgAttachSource(iterator=False)
    link = Attachment(
        "cgroup", "link", 3, "cgroup_inet_egress", POD_CGROUP, cgroup_id=50, cgroup_path=POD_CGROUP
    )
    ctx = DiscoveryContext(FakeNames(), {7: "cgroup_skb", 8: "cgroup_skb", 20: "socket_filter"})
    ctx.found[7] = [link]
    pod = {
        "cgroup_id": 50,
        "cgroup_path": POD_CGROUP,
        "container_id": CONTAINER_ID,
        "pod_uid": POD_UID,
        "qos_class": "besteffort",
    }
    assert source.read(ctx) == {
        8: [
            Attachment(
                "cgroup", "prog_attach", None, "cgroup_inet_ingress", ROOT,
                cgroup_id=1, cgroup_path=ROOT,
            ),
            Attachment(
                "cgroup", "prog_attach", None, "cgroup_inet_egress", POD_CGROUP,
                attach_flags="multi", **pod,
            ),
        ],
    }  # fmt: skip
    # Two cgroups, ingress and egress each: no namespace, no map.
    assert source.queries == 4

    ctx = DiscoveryContext(FakeNames(), {11: "flow_dissector", 12: "sk_msg", 13: "sk_lookup"})
    assert source.read(ctx) == {
        11: [Attachment("netns", "prog_attach", None, "flow_dissector", "net:[10]", netns=10)],
        12: [Attachment("sockmap", "prog_attach", None, "sk_msg_verdict", "map 4", map_id=4)],
    }
    # Two namespaces; one of the two maps is a sockmap.
    assert source.queries == 3


def test_prog_attach_source_idle_without_programs_of_its_types(
    fake_kernel: dict[tuple[str, int], tuple[list[int], int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object) -> None:
        raise AssertionError("nothing to look at")

    for name in ("walk_cgroups", "_map_ids", "network_namespaces"):
        monkeypatch.setattr(attach_query, name, never)
    source = ProgAttachSource(iterator=False)
    ctx = DiscoveryContext(FakeNames(), {1: "socket_filter", 2: "xdp", 3: "sk_lookup"})
    assert source.read(ctx) == {}
    assert source.queries == 0


def test_an_attach_type_the_kernel_does_not_know_is_not_asked_again(
    fake_kernel: dict[tuple[str, int], tuple[list[int], int]],
) -> None:
    source = ProgAttachSource(iterator=False)
    ctx = DiscoveryContext(FakeNames(), {1: "cgroup_sock_addr"})
    source.read(ctx)
    assert source.queries == 2 * 17
    # Neither the unknown attach type nor a cgroup gone since listed is an error.
    assert ctx.errors == ["BPF_PROG_QUERY cgroup_inet4_bind: Cannot allocate memory"]
    source.read(ctx)
    assert source.queries == 2 * 16


def test_sockmap_types_are_remembered(
    fake_kernel: dict[tuple[str, int], tuple[list[int], int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[int] = []
    open_map = attach_query._open_map

    def counting(map_id: int) -> tuple[int, int]:
        opened.append(map_id)
        return open_map(map_id)

    monkeypatch.setattr(attach_query, "_open_map", counting)
    source = ProgAttachSource(iterator=False)
    ctx = DiscoveryContext(FakeNames(), {1: "sk_skb"})
    source.read(ctx)
    assert opened == [3, 4]
    source.read(ctx)
    # Map 3 is known not to be a sockmap: only the sockmap is opened again.
    assert opened == [3, 4, 4]
    # EBUSY (the other kind of verdict program is attached) is no error.
    assert ctx.errors == []


def test_decode_task_fd_query_answers() -> None:
    def decoded(fd_type: int, name: bytes, offset: int = 0, addr: int = 0) -> tuple[str, str]:
        a = decode_task_fd_query(42, 7, fd_type, name, offset, addr)
        assert (a.via, a.link_id, a.attach_type, a.pid, a.fd) == ("perf_event", None, None, 42, 7)
        return a.kind, a.target

    # Written as the link decoder writes a perf_event link's target.
    assert decoded(TaskFdType.KPROBE, b"tcp_v4_connect\0junk") == (
        "kprobe",
        "kprobe tcp_v4_connect",
    )
    assert decoded(TaskFdType.KPROBE, b"tcp_v4_connect", 0x10) == (
        "kprobe",
        "kprobe tcp_v4_connect+0x10",
    )
    assert decoded(TaskFdType.KRETPROBE, b"do_sys_open") == ("kprobe", "kretprobe do_sys_open")
    assert decoded(TaskFdType.KPROBE, b"", 0, 0xFFFFFFFF81000000) == (
        "kprobe",
        "kprobe 0xffffffff81000000",
    )
    assert decoded(TaskFdType.UPROBE, b"/usr/bin/bash\0", 0x4A0) == (
        "uprobe",
        "uprobe /usr/bin/bash+0x4a0",
    )
    assert decoded(TaskFdType.URETPROBE, b"/lib/libc.so.6", 0) == (
        "uprobe",
        "uretprobe /lib/libc.so.6+0x0",
    )
    assert decoded(TaskFdType.TRACEPOINT, b"sys_enter_openat") == ("tracepoint", "sys_enter_openat")
    assert decoded(TaskFdType.RAW_TRACEPOINT, b"sched_switch") == ("raw_tracepoint", "sched_switch")
    assert decoded(9, b"") == ("perf_event", "fd type 9")
    # Whole objects, as JSON writes them.
    a = decode_task_fd_query(42, 7, TaskFdType.KPROBE, b"tcp_v4_connect", 0, 0)
    assert a == Attachment(
        "kprobe", "perf_event", None, None, "kprobe tcp_v4_connect", pid=42, fd=7
    )
    assert jsonl._attachments((a,)) == [
        {
            "kind": "kprobe",
            "via": "perf_event",
            "link_id": None,
            "attach_type": None,
            "target": "kprobe tcp_v4_connect",
            "pid": 42,
            "fd": 7,
        }
    ]


def test_json_writes_attach_flags() -> None:
    a = Attachment(
        "cgroup", "prog_attach", None, "cgroup_inet_egress", ROOT, cgroup_id=1,
        cgroup_path=ROOT, attach_flags="multi",
    )  # fmt: skip
    (obj,) = jsonl._attachments((a,)) or []
    assert obj["attach_flags"] == "multi" and obj["via"] == "prog_attach"
    assert obj["link_id"] is None


def test_perf_event_source_asks_only_for_unfound_perf_programs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fds = {100: [("3", "anon_inode:[perf_event]"), ("4", "socket:[5]")], 200: []}
    fds[300] = [("9", "anon_inode:[perf_event]"), ("10", "anon_inode:[perf_event]")]
    answers = {
        (100, 3): (5, decode_task_fd_query(100, 3, TaskFdType.UPROBE, b"/bin/x", 16, 0)),
        (300, 9): (6, decode_task_fd_query(300, 9, TaskFdType.KPROBE, b"f", 0, 0)),
        # A program a link already holds: not this source's to report.
        (300, 10): (7, decode_task_fd_query(300, 10, TaskFdType.TRACEPOINT, b"t", 0, 0)),
    }
    asked: list[tuple[int, int]] = []

    def task_fd_query(pid: int, fd: int) -> tuple[int, Attachment] | None:
        asked.append((pid, fd))
        return answers.get((pid, fd))

    monkeypatch.setattr(attach_query, "process_ids", lambda: iter(fds))
    monkeypatch.setattr(attach_query, "fd_targets", lambda pid: iter(fds[pid]))
    monkeypatch.setattr(attach_query, "task_fd_query", task_fd_query)
    source = PerfEventSource()
    link = Attachment("tracepoint", "link", 1, "perf_event", "t")
    programs = {5: "kprobe", 6: "kprobe", 7: "tracepoint", 8: "xdp"}
    ctx = DiscoveryContext(FakeNames(), programs, found={7: [link]})
    assert source.read(ctx) == {5: [answers[(100, 3)][1]], 6: [answers[(300, 9)][1]]}
    assert asked == [(100, 3), (300, 9), (300, 10)]
    # Nothing to look for: no process is looked at.
    asked.clear()
    # A perf_event program is never named by the kernel: no scan for it either.
    ctx = DiscoveryContext(FakeNames(), {7: "tracepoint", 9: "perf_event"}, found={7: [link]})
    assert source.read(ctx) == {}
    assert asked == [] and source.queries == 0


def test_a_cgroup_the_shared_names_do_not_know_yet_is_named_from_the_walk(
    fake_kernel: dict[tuple[str, int], tuple[list[int], int]],
) -> None:
    # A container's cgroup made since the names' last scan (rescanned at most once a
    # second): the walk has its path.
    fake_kernel[("cg50", at("cgroup_device"))] = ([8], 0)
    names = FakeNames()
    names.cgroups = {}
    found = ProgAttachSource(iterator=False).read(DiscoveryContext(names, {8: "cgroup_device"}))
    assert found == {
        8: [
            Attachment(
                "cgroup", "prog_attach", None, "cgroup_device", POD_CGROUP, cgroup_id=50,
                cgroup_path=POD_CGROUP, container_id=CONTAINER_ID, pod_uid=POD_UID,
                qos_class="besteffort",
            )
        ]
    }  # fmt: skip
