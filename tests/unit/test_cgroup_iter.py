"""The ``iter/cgroup`` path of the ``prog_attach`` source without the kernel: the slot ->
attach type names from ``enum cgroup_bpf_attach_type``, record decoding, and the records
turned into the attachments the query walk makes.  The program itself is compared with the
query walk on the real kernel in tests/kernel/test_cgroup_iter_attachments.py."""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

import pytest

from otel_bpf.kernel import asm, attach, attach_query
from otel_bpf.kernel._uapi import ATTACH_TYPE_NAMES, BPF_F_ALLOW_MULTI, BPF_F_ALLOW_OVERRIDE
from otel_bpf.kernel.attach import Names
from otel_bpf.kernel.attach_discovery import DiscoveryContext, default_sources
from otel_bpf.kernel.attach_query import CGROUP_ATTACH_TYPES, ProgAttachSource
from otel_bpf.kernel.errors import BpfError
from otel_bpf.kernel.iterator import cgroups
from otel_bpf.kernel.iterator.cgroups import (
    RECORD,
    CgroupIterLayout,
    CgroupProgRecord,
    build_program,
    decode,
    slot_names,
)
from otel_bpf.records import Attachment

# enum cgroup_bpf_attach_type as Linux 6.18 has it.
KERNEL_6_18 = {
    "CGROUP_BPF_ATTACH_TYPE_INVALID": -1,
    "CGROUP_INET_INGRESS": 0,
    "CGROUP_INET_EGRESS": 1,
    "CGROUP_INET_SOCK_CREATE": 2,
    "CGROUP_SOCK_OPS": 3,
    "CGROUP_DEVICE": 4,
    "CGROUP_INET4_BIND": 5,
    "CGROUP_INET6_BIND": 6,
    "CGROUP_INET4_CONNECT": 7,
    "CGROUP_INET6_CONNECT": 8,
    "CGROUP_UNIX_CONNECT": 9,
    "CGROUP_INET4_POST_BIND": 10,
    "CGROUP_INET6_POST_BIND": 11,
    "CGROUP_UDP4_SENDMSG": 12,
    "CGROUP_UDP6_SENDMSG": 13,
    "CGROUP_UNIX_SENDMSG": 14,
    "CGROUP_SYSCTL": 15,
    "CGROUP_UDP4_RECVMSG": 16,
    "CGROUP_UDP6_RECVMSG": 17,
    "CGROUP_UNIX_RECVMSG": 18,
    "CGROUP_GETSOCKOPT": 19,
    "CGROUP_SETSOCKOPT": 20,
    "CGROUP_INET4_GETPEERNAME": 21,
    "CGROUP_INET6_GETPEERNAME": 22,
    "CGROUP_UNIX_GETPEERNAME": 23,
    "CGROUP_INET4_GETSOCKNAME": 24,
    "CGROUP_INET6_GETSOCKNAME": 25,
    "CGROUP_UNIX_GETSOCKNAME": 26,
    "CGROUP_INET_SOCK_RELEASE": 27,
    "CGROUP_LSM_START": 28,
    "CGROUP_LSM_END": 37,
    "MAX_CGROUP_BPF_ATTACH_TYPE": 38,
}


def test_slot_names_are_the_uapi_attach_types() -> None:
    names = slot_names(KERNEL_6_18)
    assert len(names) == 38
    assert names[0] == "cgroup_inet_ingress" and names[4] == "cgroup_device"
    assert names[27] == "cgroup_inet_sock_release"
    assert names[28:] == ("lsm_cgroup",) * 10
    # Every slot is an attach type the query walk asks about, named as it names them.
    queried = {name for types in CGROUP_ATTACH_TYPES.values() for name in types}
    assert set(names) == queried
    assert set(names) <= set(ATTACH_TYPE_NAMES)


def test_slot_names_follow_the_enum_not_fixed_numbers() -> None:
    # A kernel that numbers the slots otherwise, with one this version does not know and
    # no LSM slots.
    values = {
        "CGROUP_INET_EGRESS": 0,
        "CGROUP_NEW_HOOK": 1,
        "CGROUP_INET_INGRESS": 2,
        "MAX_CGROUP_BPF_ATTACH_TYPE": 4,
    }
    assert slot_names(values) == (
        "cgroup_inet_egress",
        "cgroup_new_hook",
        "cgroup_inet_ingress",
        "cgroup_slot_3",
    )
    with pytest.raises(ValueError, match="MAX_CGROUP_BPF_ATTACH_TYPE"):
        slot_names({"CGROUP_INET_INGRESS": 0})


def test_decode_keeps_programs_attached_without_a_link() -> None:
    data = b"".join(
        [
            RECORD.pack(50, 7, 1, BPF_F_ALLOW_MULTI, 0, 0),
            RECORD.pack(50, 0, 1, BPF_F_ALLOW_MULTI, 1, 0),  # a link's entry
            RECORD.pack(50, 0, 1, BPF_F_ALLOW_MULTI, 0, 0),  # its program unreadable
            RECORD.pack(1 << 40, 9, 28, 0, 0, 0),
            RECORD.pack(50, 8, 1, 0, 0, 0)[:10],  # a torn tail
        ]
    )
    assert RECORD.size == 16
    assert decode(data) == [
        CgroupProgRecord(50, 7, 1, BPF_F_ALLOW_MULTI),
        CgroupProgRecord(1 << 40, 9, 28, 0),
    ]


LAYOUT = CgroupIterLayout(
    attach_btf_id=1,
    ctx_meta=0,
    ctx_cgroup=8,
    meta_seq=0,
    cgroup_kn=256,
    kn_id=96,
    progs=1464,
    flags=1464 + 38 * 8,
    slots=38,
    entry_node=0,
    node_next=0,
    entry_prog=16,
    entry_link=24,
    prog_aux=56,
    aux_id=28,
    slot_names=slot_names(KERNEL_6_18),
)


def test_program_is_bounded_and_fits_the_stack() -> None:
    insns = build_program(LAYOUT)
    # Backward jumps only close the two loops, each bounded by an immediate.
    back = [i for i in insns if i.code & 0x07 == asm.BPF_JMP and i.off < 0]
    assert sorted(i.imm for i in back) == sorted([cgroups.MAX_PROGS, LAYOUT.slots])
    # With bpf_iter_num the loops are the kfuncs': new, next and destroy for each.
    iterated = build_program(
        CgroupIterLayout(
            **{**LAYOUT.__dict__, "iter_num_new": 5, "iter_num_next": 6, "iter_num_destroy": 7}
        )  # type: ignore[arg-type]
    )
    kfuncs = [i.imm for i in iterated if i.code == 0x85 and i.src == asm.BPF_PSEUDO_KFUNC_CALL]
    assert sorted(kfuncs) == [5, 5, 6, 6, 7, 7]
    assert not any(i.imm == cgroups.MAX_PROGS and i.off < 0 for i in iterated)
    assert LAYOUT.arrays_size == 38 * 9
    assert LAYOUT.entry_size == 32
    deep = LAYOUT.progs + 80 * 8
    with pytest.raises(BpfError, match="too big"):
        build_program(
            CgroupIterLayout(**{**LAYOUT.__dict__, "flags": deep, "slots": 80})  # type: ignore[arg-type]
        )


ROOT = "/sys/fs/cgroup"
POD = (
    "/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0c1d2e3f_4a5b_6c7d_8e9f_a0b1c2d3e4f5.slice/cri-containerd-"
    + "ab" * 32
    + ".scope"
)


class FakeNames(Names):
    def __init__(self) -> None:
        super().__init__(cgroup_root=ROOT)
        self.asked: list[int] = []

    def _scanned_cgroup(self, cgroup_id: int) -> str | None:
        # The scan of the hierarchy, what answers when file handles cannot be opened.
        self.asked.append(cgroup_id)
        return {1: ROOT}.get(cgroup_id)


@dataclass
class FakeIterator:
    records: list[CgroupProgRecord]
    root: str = ROOT
    prog_id: int = 99
    layout: CgroupIterLayout = LAYOUT
    closed: bool = False
    fail: OSError | None = None

    def read_raw(self) -> bytes:
        if self.fail is not None:
            raise self.fail
        return b"".join(RECORD.pack(*record, 0, 0) for record in self.records)

    def close(self) -> None:
        self.closed = True


def open_root(names: Names) -> None:
    names._cgroup_root_fd = 1000


def test_records_become_the_query_walks_attachments(monkeypatch: pytest.MonkeyPatch) -> None:
    by_handle: list[int] = []
    paths = {50: POD, 60: None}  # 60: removed since the pass

    def path_by_handle(root_fd: int, cgroup_id: int) -> str | None:
        by_handle.append(cgroup_id)
        return paths[cgroup_id]

    monkeypatch.setattr(attach, "_path_by_handle", path_by_handle)
    # The cgroup2 root, opened for handles, stands for itself here.
    monkeypatch.setattr(attach.Names, "_open_cgroup_root", open_root)
    fake = FakeIterator(
        [
            CgroupProgRecord(50, 7, 1, BPF_F_ALLOW_MULTI),
            CgroupProgRecord(50, 8, 1, BPF_F_ALLOW_MULTI),
            CgroupProgRecord(50, 7, 4, BPF_F_ALLOW_OVERRIDE),
            CgroupProgRecord(60, 7, 0, 0),
            CgroupProgRecord(50, 9, 30, 0),
        ]
    )
    source = ProgAttachSource()
    source._iterator = fake  # type: ignore[assignment]
    names = FakeNames()
    link = Attachment("cgroup", "link", 3, "cgroup_inet_egress", POD, cgroup_id=50)
    ctx = DiscoveryContext(names, {7: "cgroup_skb", 8: "cgroup_skb", 9: "lsm"}, {8: [link]})
    pod = {
        "cgroup_id": 50,
        "cgroup_path": POD,
        "container_id": "ab" * 32,
        "pod_uid": "0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5",
        "qos_class": "burstable",
    }

    def attached(attach_type: str, flags: str | None) -> Attachment:
        return Attachment(
            "cgroup", "prog_attach", None, attach_type, POD, attach_flags=flags, **pod
        )

    expected = {
        7: [attached("cgroup_inet_egress", "multi"), attached("cgroup_device", "override")],
        # A link on the same hook takes nothing away: the iterator tells them apart.
        8: [attached("cgroup_inet_egress", "multi")],
        9: [attached("lsm_cgroup", None)],
    }
    assert source.read(ctx) == expected
    assert source.iterated and source.queries == 0
    assert by_handle == [50, 60] and names.asked == []
    assert source.own_programs() == (99,)
    # The same output again: the same answer, nothing looked up.
    again = source.read(ctx)
    assert again == expected and again[7][0] is source.read(ctx)[7][0]
    assert by_handle == [50, 60]
    # A program more on a known cgroup: its attachment is the other programs' there.
    fake.records.append(CgroupProgRecord(50, 10, 4, BPF_F_ALLOW_OVERRIDE))
    more = source.read(ctx)
    assert more[10] == [attached("cgroup_device", "override")]
    assert more[10][0] is more[7][1]
    assert by_handle == [50, 60, 60]
    source.close()
    assert fake.closed and source.own_programs() == ()


def test_without_file_handles_the_shared_names_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(root_fd: int, cgroup_id: int) -> str | None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(attach, "_path_by_handle", denied)
    # The cgroup2 root, opened for handles, stands for itself here.
    monkeypatch.setattr(attach.Names, "_open_cgroup_root", open_root)
    source = ProgAttachSource()
    source._iterator = FakeIterator([CgroupProgRecord(1, 7, 0, 0)])  # type: ignore[assignment]
    names = FakeNames()
    found = source.read(DiscoveryContext(names, {7: "cgroup_skb"}))
    assert found == {
        7: [
            Attachment(
                "cgroup", "prog_attach", None, "cgroup_inet_ingress", ROOT,
                cgroup_id=1, cgroup_path=ROOT,
            )
        ]
    }  # fmt: skip
    assert names.asked == [1]


def test_a_failed_read_is_made_by_the_query_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    walked: list[str] = []

    def walk(root: str) -> list[tuple[int, int, str]]:
        walked.append(root)
        return []

    monkeypatch.setattr(attach_query, "walk_cgroups", walk)
    source = ProgAttachSource()
    fake = FakeIterator([], fail=OSError(errno.EOPNOTSUPP, "Operation not supported"))
    source._iterator = fake  # type: ignore[assignment]
    assert source.read(DiscoveryContext(FakeNames(), {7: "cgroup_skb"})) == {}
    assert walked == [ROOT] and not source.iterated
    # The next read tries the iterator again.
    fake.fail = None
    assert source.read(DiscoveryContext(FakeNames(), {7: "cgroup_skb"})) == {}
    assert walked == [ROOT] and source.iterated


def test_a_kernel_without_the_iterator_is_queried_with_one_log_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    opened: list[str] = []

    def refused(root: str) -> None:
        opened.append(root)
        raise BpfError(errno.ENOENT, "vmlinux BTF has no FUNC 'bpf_iter_cgroup'")

    monkeypatch.setattr(cgroups.CgroupIterator, "open", staticmethod(refused))
    monkeypatch.setattr(attach_query, "walk_cgroups", lambda root: iter([]))
    source = ProgAttachSource()
    with caplog.at_level(logging.INFO, logger="otel_bpf.attach"):
        for _ in range(3):
            assert source.read(DiscoveryContext(FakeNames(), {7: "cgroup_device"})) == {}
    assert opened == [ROOT] and not source.iterated
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "bpf_iter_cgroup" in lines[0]


def test_nothing_is_loaded_without_a_cgroup_program(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(root: str) -> None:
        raise AssertionError("not needed")

    monkeypatch.setattr(cgroups.CgroupIterator, "open", staticmethod(never))
    source = ProgAttachSource()
    assert source.read(DiscoveryContext(FakeNames(), {1: "xdp"})) == {}
    assert source.own_programs() == ()


def test_default_sources_expose_the_iterator_program() -> None:
    source = next(s for s in default_sources() if s.name == "prog_attach")
    assert source.close is not None and source.own_programs is not None
    assert list(source.own_programs()) == []
    source.close()
