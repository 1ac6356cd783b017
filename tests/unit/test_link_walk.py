"""The link walk kept between discoveries (``LinkWalk``): which links it asks the kernel about
again, from hand-made iterator records and info bytes (no privileges).  The same walk against
the real kernel, compared with the syscall walk: tests/kernel/test_link_walk_iterator.py."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from typing import Any

import pytest
from test_link_attach import FakeNames, info

from otel_bpf.kernel import attach
from otel_bpf.kernel._uapi import LinkType
from otel_bpf.kernel.attach import LinkWalk, Names, decode_link_info
from otel_bpf.kernel.iterator.links import (
    FLAG,
    RECORD,
    LinkIterLayout,
    build_program,
    decode,
)
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtfError
from otel_bpf.records import Attachment

RAW_TP, CGROUP = LinkType.RAW_TRACEPOINT, LinkType.CGROUP
XDP, NETKIT = LinkType.XDP, LinkType.NETKIT


class FakeWalk(LinkWalk):
    """Iterator records and per-link info from dicts; counts what it fetches."""

    def __init__(self, stateful: Iterable[int] = (XDP, CGROUP)) -> None:
        super().__init__()
        self._stateful = frozenset(stateful)
        # id -> (type, prog, state, netns, device)
        self.links: dict[int, tuple[int, int, int, int, bytes]] = {}
        self.infos: dict[int, tuple[bytes, bytes]] = {}
        self.asked: list[int] = []

    def add(
        self,
        link_id: int,
        link_type: int,
        prog_id: int,
        union: bytes,
        state: int = 0,
        netns: int = 0,
        device: bytes = b"",
    ) -> None:
        self.links[link_id] = (link_type, prog_id, state, netns, device)
        name = b"sys_enter\0" if link_type == RAW_TP else b""
        self.infos[link_id] = (info(link_type, link_id, prog_id, union), name)

    def _read_raw(self) -> bytes:
        return b"".join(
            RECORD.pack(i, t, p, netns, state, device)
            for i, (t, p, state, netns, device) in sorted(self.links.items())
        )

    def _fetch(
        self, reader: object, link_id: int, errors: list[str] | None
    ) -> tuple[bytes, bytes] | None:
        self.asked.append(link_id)
        return self.infos.get(link_id)


def syscall_result(walk: FakeWalk, names: Names) -> dict[int, list[Attachment]]:
    """What the syscall walk would give for the same links."""
    found: dict[int, list[Attachment]] = {}
    for link_id in sorted(walk.links):
        data, name = walk.infos[link_id]
        prog_id, a = decode_link_info(data, names, name)
        found.setdefault(prog_id, []).append(a)
    return found


def asked(walk: FakeWalk, names: Names) -> list[int]:
    walk.asked.clear()
    assert walk.read(names) == syscall_result(walk, names)
    return sorted(walk.asked)


def test_unchanged_links_cost_no_syscalls() -> None:
    walk, names = FakeWalk(), FakeNames()
    walk.add(3, RAW_TP, 30, struct.pack("<QI", 0, 0))
    walk.add(4, XDP, 40, struct.pack("<I", 7), state=7)
    walk.add(5, CGROUP, 50, struct.pack("<QI", 4242, 1), state=1)
    assert asked(walk, names) == [3, 4, 5]
    assert asked(walk, names) == []
    assert walk.fetched == 0


def test_a_changed_record_is_read_again() -> None:
    walk, names = FakeWalk(), FakeNames()
    walk.add(3, RAW_TP, 30, b"")
    walk.add(4, XDP, 40, struct.pack("<I", 7), state=7)
    walk.add(5, CGROUP, 50, struct.pack("<QI", 4242, 1), state=1)
    asked(walk, names)
    # The device went away (ifindex 0), the cgroup link was detached, a program replaced.
    walk.add(4, XDP, 40, struct.pack("<I", 0), state=0)
    walk.add(5, CGROUP, 50, struct.pack("<QI", 0, 1), state=0)
    walk.add(3, RAW_TP, 31, b"")
    assert asked(walk, names) == [3, 4, 5]
    found = walk.read(names)
    assert found[40][0].target == "detached"
    assert found[50][0].target == "cgroup id 0"
    assert 30 not in found and found[31][0].target == "sys_enter"


def test_a_link_gone_leaves_results_and_cache() -> None:
    walk, names = FakeWalk(), FakeNames()
    walk.add(3, RAW_TP, 30, b"")
    walk.add(4, RAW_TP, 40, b"")
    asked(walk, names)
    del walk.links[3]
    assert asked(walk, names) == []
    assert set(walk.read(names)) == {40}
    assert set(walk._known) == {4}


def test_a_link_gone_between_iterator_and_syscall_is_skipped() -> None:
    walk, names = FakeWalk(), FakeNames()
    walk.add(3, RAW_TP, 30, b"")
    del walk.infos[3]
    assert walk.read(names) == {}
    assert walk._known == {}


def test_mutable_targets_without_iterator_state_are_read_every_walk() -> None:
    # netkit's struct is in a module's BTF: the iterator cannot tell a detach.
    walk, names = FakeWalk(stateful=(XDP,)), FakeNames()
    walk.add(4, NETKIT, 40, struct.pack("<II", 7, 50))
    walk.add(5, 99, 50, b"")  # a link type newer than this code
    walk.add(6, XDP, 60, struct.pack("<I", 1), state=1)
    asked(walk, names)
    assert asked(walk, names) == [4, 5]


def test_a_renamed_interface_is_named_anew_without_syscalls() -> None:
    # The iterator reads a device link's device name and namespace: a rename changes the
    # record, and the link is decoded again with the new name, without asking the kernel.
    walk, names = FakeWalk(), FakeNames()
    own = os.stat("/proc/self/ns/net").st_ino
    walk.add(4, XDP, 40, struct.pack("<I", 7), state=7, netns=own, device=b"eth0")
    walk.add(5, XDP, 50, struct.pack("<I", 3), state=3, netns=4026532280, device=b"veth1")
    walk.add(6, CGROUP, 60, struct.pack("<QI", 4242, 1), state=1)
    found = walk.read(names)
    assert (found[40][0].target, found[40][0].netns) == ("eth0", own)
    assert (found[50][0].target, found[50][0].ifname) == ("veth1@netns:4026532280", "veth1")
    walk.links[4] = (XDP, 40, 7, own, b"wan0")
    walk.asked.clear()
    found = walk.read(names)
    assert walk.asked == [] and (found[40][0].target, found[40][0].ifname) == ("wan0", "wan0")


def test_the_same_records_give_the_last_attachments_without_decoding() -> None:
    walk, names = FakeWalk(), FakeNames()
    walk.add(3, RAW_TP, 30, struct.pack("<QI", 0, 0))
    walk.add(6, CGROUP, 60, struct.pack("<QI", 4242, 1), state=1)
    first = walk.read(names)
    assert walk.read(names) is first and walk.fetched == 0
    # A name not found yet (a cgroup made a moment ago) is asked again next walk.
    walk.add(7, CGROUP, 70, struct.pack("<QI", 77, 1), state=1)
    assert walk.read(names)[70][0].cgroup_path is None
    names.cgroups[77] = "/sys/fs/cgroup/new"
    assert walk.read(names)[70][0].cgroup_path == "/sys/fs/cgroup/new"


def test_undecodable_info_is_an_error_every_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    walk, names = FakeWalk(), FakeNames()
    walk.add(3, RAW_TP, 30, b"")

    def broken(data: bytes, names: Names, name: bytes = b"") -> tuple[int, Attachment]:
        raise struct.error("bad")

    monkeypatch.setattr(attach, "decode_link_info", broken)
    for _ in range(2):
        errors: list[str] = []
        assert walk.read(names, errors) == {}
        assert errors == ["link 3: bad"]


def test_without_the_iterator_every_walk_is_the_syscall_walk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = []

    def syscall_walk(
        names: Names | None = None, errors: list[str] | None = None
    ) -> dict[int, list[Attachment]]:
        calls.append(names)
        return {1: [Attachment("iter", "link", 2, "trace_iter", "bpf_prog")]}

    monkeypatch.setattr(attach, "read_link_attachments", syscall_walk)
    names = FakeNames()
    with LinkWalk(iterator=False) as walk:
        assert walk.read(names) == syscall_walk()
        assert not walk.fast and walk.fetched == 1
    assert calls[0] is names


def count_calls(insns: list[Any]) -> int:
    return sum(1 for i in insns if i.code == 0x85)  # BPF_JMP | BPF_CALL


def test_iterator_records_decode_and_program_builds() -> None:
    data = (
        RECORD.pack(7, XDP, 70, 4026532280, 3, b"veth0\0garbage!!")
        + RECORD.pack(8, CGROUP, 80, 0, 1, b"")
        + RECORD.pack(9, XDP, 90, 0, 0, b"")  # detached: no device
        + b"\1\2"
    )
    assert [tuple(r) for r in decode(data)] == [
        (7, XDP, 70, 3, 4026532280, "veth0"),
        (8, CGROUP, 80, 1, 0, ""),
        (9, XDP, 90, 0, 0, ""),
    ]
    layout = LinkIterLayout(
        attach_btf_id=1,
        ctx_meta=0,
        ctx_link=8,
        meta_seq=0,
        link_id=8,
        link_type=16,
        link_prog=32,
        prog_aux=80,
        aux_id=32,
        chains={XDP: (88, 224), CGROUP: (88, -1)},
    )
    with_device = LinkIterLayout(**{**layout.__dict__, "device": (0, 296, 120)})
    # The device's name and namespace take three more reads.
    assert count_calls(build_program(with_device)) == count_calls(build_program(layout)) + 3
    insns = build_program(layout)
    # Every chain compares the link type once.
    compared = [i.imm for i in insns if i.code == 0x55]  # jne imm
    assert XDP in compared and CGROUP in compared
    assert len(build_program(LinkIterLayout(**{**layout.__dict__, "chains": {}}))) < len(insns)


class FakeBtf:
    """Member offsets from a dict; what it lacks raises like vmlinux BTF does."""

    def __init__(self, offsets: dict[tuple[str, str], int]) -> None:
        self.offsets = offsets

    def prefetch(self, names: Iterable[str]) -> None:
        pass

    def func_id(self, name: str) -> int:
        return 77

    def member_offset(self, struct_name: str, member: str) -> int:
        try:
            return self.offsets[struct_name, member]
        except KeyError:
            raise VmlinuxBtfError(2, f"no {struct_name}.{member}") from None


def test_layout_leaves_out_links_whose_struct_btf_lacks() -> None:
    offsets = {
        ("bpf_iter__bpf_link", "meta"): 0,
        ("bpf_iter__bpf_link", "link"): 8,
        ("bpf_iter_meta", "seq"): 0,
        ("bpf_link", "id"): 8,
        ("bpf_link", "type"): 16,
        ("bpf_link", "prog"): 32,
        ("bpf_prog", "aux"): 80,
        ("bpf_prog_aux", "id"): 32,
        ("bpf_xdp_link", "link"): 0,
        ("bpf_xdp_link", "dev"): 88,
        ("net_device", "ifindex"): 224,
        ("bpf_netns_link", "link"): 0,
        ("bpf_netns_link", "net"): 96,
        ("net", "ns"): 160,
        ("ns_common", "inum"): 24,
        ("bpf_cgroup_link", "link"): 0,
        ("bpf_cgroup_link", "cgroup"): 88,
        # The link is not the first member: the iterator's pointer is not the container's.
        ("tcx_link", "link"): 8,
        ("tcx_link", "dev"): 0,
    }
    layout = LinkIterLayout.from_btf(FakeBtf(offsets))  # type: ignore[arg-type]
    assert layout.attach_btf_id == 77
    assert layout.chains == {XDP: (88, 224), LinkType.NETNS: (96, 184), CGROUP: (88, FLAG)}
