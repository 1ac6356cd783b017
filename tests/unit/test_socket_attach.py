"""The ``sockets`` attach-point source without the kernel: the iterator's records decoded from
hand-built bytes, turned into attachments, and the source's load-once behaviour."""

from __future__ import annotations

import json

import pytest

from otel_bpf.cli import jsonl
from otel_bpf.kernel import asm, attach_sockets
from otel_bpf.kernel._uapi import AttachType
from otel_bpf.kernel.attach import Names
from otel_bpf.kernel.attach_discovery import (
    AttachmentDiscovery,
    DiscoveryContext,
    Source,
    default_sources,
)
from otel_bpf.kernel.attach_sockets import SocketSource, attachment
from otel_bpf.kernel.errors import BpfError
from otel_bpf.kernel.iterator import sockets
from otel_bpf.kernel.iterator.sockets import (
    KIND_FILTER,
    KIND_REUSEPORT,
    RECORD,
    SocketProgram,
    SocketsLayout,
    decode,
)
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtfError
from otel_bpf.records import Attachment


def record(
    tgid: int, fd: int, prog_id: int, kind: int = KIND_FILTER, at: int = 0, comm: bytes = b"nginx"
) -> bytes:
    return RECORD.pack(tgid, fd, prog_id, kind, at, comm)


def test_record_layout() -> None:
    assert RECORD.size == 32
    assert record(1, 2, 3, KIND_REUSEPORT, 39, b"x") == (
        (1).to_bytes(4, "little")
        + (2).to_bytes(4, "little")
        + (3).to_bytes(4, "little")
        + (2).to_bytes(2, "little")
        + (39).to_bytes(2, "little")
        + b"x".ljust(16, b"\0")
    )


def test_decode_records() -> None:
    data = record(812, 5, 40) + record(812, 7, 41, KIND_REUSEPORT, 40, b"python3")
    assert decode(data) == [
        SocketProgram(812, 5, 40, KIND_FILTER, 0, "nginx"),
        SocketProgram(812, 7, 41, KIND_REUSEPORT, 40, "python3"),
    ]


def test_decode_full_comm_and_bad_utf8() -> None:
    # 16 bytes without a NUL (the kernel's comm always has one; a damaged stream may not),
    # and bytes that are not UTF-8: decoded, never raising.
    assert decode(record(1, 3, 9, comm=b"a" * 16))[0].comm == "a" * 16
    assert decode(record(1, 4, 9, comm=b"\xff\xfe"))[0].comm == "\ufffd\ufffd"


def test_decode_truncated_input() -> None:
    data = record(812, 5, 40) + record(813, 6, 41)
    assert decode(b"") == []
    assert decode(data[:10]) == []
    # A torn last record is dropped; the whole ones before it are kept.
    assert decode(data[:-1]) == [SocketProgram(812, 5, 40, KIND_FILTER, 0, "nginx")]
    assert decode(data[: RECORD.size + 31]) == decode(data[: RECORD.size])


def test_decode_folds_repeats_and_skips_unknown_kinds() -> None:
    # A thread with a file table of its own is walked again: the same (pid, fd, program)
    # comes twice and is reported once.  The same fd with its filter and its reuseport
    # program is two attachments.
    data = (
        record(812, 5, 40)
        + record(812, 5, 40)
        + record(812, 5, 41, KIND_REUSEPORT)
        + record(812, 6, 40, kind=7)
        + record(900, 5, 40)
    )
    assert [(f.pid, f.fd, f.prog_id, f.kind) for f in decode(data)] == [
        (812, 5, 40, KIND_FILTER),
        (812, 5, 41, KIND_REUSEPORT),
        (900, 5, 40, KIND_FILTER),
    ]


def test_filter_attachment() -> None:
    a = attachment(SocketProgram(812, 5, 40, KIND_FILTER, 0, "python3"))
    assert a == Attachment(
        kind="socket",
        via="socket",
        link_id=None,
        attach_type=None,
        target="pid 812 fd 5",
        pid=812,
        fd=5,
        comm="python3",
    )


@pytest.mark.parametrize(
    ("expected", "name"),
    [
        (AttachType.SK_REUSEPORT_SELECT, "sk_reuseport_select"),
        (AttachType.SK_REUSEPORT_SELECT_OR_MIGRATE, "sk_reuseport_select_or_migrate"),
        # A socket_filter program run as a reuseport selector: loaded for no attach type (0).
        (0, "sk_reuseport_select"),
    ],
)
def test_reuseport_attachment(expected: int, name: str) -> None:
    a = attachment(SocketProgram(9, 3, 41, KIND_REUSEPORT, expected, "envoy"))
    assert (a.kind, a.via, a.attach_type, a.target, a.pid, a.fd) == (
        "socket",
        "socket",
        name,
        "pid 9 fd 3",
        9,
        3,
    )


def test_source_groups_by_program_in_pid_fd_order() -> None:
    data = (
        record(900, 4, 40)
        + record(812, 9, 40)
        + record(812, 5, 41, KIND_REUSEPORT, 39)
        + record(812, 5, 40)
        + record(812, 5, 40)  # a thread with a file table of its own: the same again
        + record(812, 6, 40, kind=7)  # a kind this version does not know
        + record(1, 2, 3)[:20]  # torn
    )
    by_prog = SocketSource()._attachments(data)
    assert sorted(by_prog) == [40, 41]
    assert [a.target for a in by_prog[40]] == ["pid 812 fd 5", "pid 812 fd 9", "pid 900 fd 4"]
    assert [(a.target, a.attach_type) for a in by_prog[41]] == [
        ("pid 812 fd 5", "sk_reuseport_select")
    ]


def test_source_reuses_what_did_not_change() -> None:
    source = SocketSource()
    first = source._attachments(record(812, 5, 40) + record(812, 9, 40))
    # The same output: the same result, not rebuilt.
    assert source._attachments(record(812, 5, 40) + record(812, 9, 40)) is first
    # One socket closed, one opened: the one that stayed keeps its very attachment object.
    second = source._attachments(record(812, 5, 40) + record(812, 11, 40))
    assert [a.fd for a in second[40]] == [5, 11]
    assert second[40][0] is first[40][0]
    assert source._attachments(b"") == {}


def test_json_lines_write_pid_fd_and_comm() -> None:
    # A process name is untrusted text: the JSON encoder escapes its control characters.
    a = attachment(SocketProgram(812, 5, 40, KIND_FILTER, 0, "py\x1b[2J"))
    obj = jsonl._attachments((a,))
    assert obj == [
        {
            "kind": "socket",
            "via": "socket",
            "link_id": None,
            "attach_type": None,
            "target": "pid 812 fd 5",
            "pid": 812,
            "fd": 5,
            "comm": "py\x1b[2J",
        }
    ]
    line = jsonl.encode({"attachments": obj})
    assert "\x1b" not in line and json.loads(line)["attachments"] == obj


def ctx(programs: dict[int, str]) -> DiscoveryContext:
    return DiscoveryContext(Names(cgroup_root="/sys/fs/cgroup"), programs)


class FakeIterator:
    """Stands for the loaded program: counts loads and reads, answers fixed records."""

    loads = 0

    def __init__(self) -> None:
        FakeIterator.loads += 1
        self.prog_id = 77
        self.reads = 0
        self.closed = False

    def read_raw(self) -> bytes:
        self.reads += 1
        return record(812, 5, 40, comm=b"python3")

    def close(self) -> None:
        self.closed = True


def test_source_loads_nothing_without_socket_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeIterator.loads = 0
    monkeypatch.setattr(attach_sockets, "SocketsIterator", FakeIterator)
    source = SocketSource()
    assert source.read(ctx({1: "xdp", 2: "cgroup_skb"})) == {}
    assert FakeIterator.loads == 0


@pytest.mark.parametrize("prog_type", ["socket_filter", "sk_reuseport"])
def test_source_loads_once_and_reads_per_discovery(
    monkeypatch: pytest.MonkeyPatch, prog_type: str
) -> None:
    FakeIterator.loads = 0
    monkeypatch.setattr(attach_sockets, "SocketsIterator", FakeIterator)
    source = SocketSource()
    for _ in range(3):
        found = source.read(ctx({40: prog_type, 7: "xdp"}))
        assert [a.target for a in found[40]] == ["pid 812 fd 5"]
    assert FakeIterator.loads == 1
    it = source._iterator
    assert isinstance(it, FakeIterator) and it.reads == 3
    source.close()
    assert it.closed and source._iterator is None


def test_source_that_cannot_load_fails_alike_without_retrying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts = []

    def refuse() -> None:
        attempts.append(1)
        raise VmlinuxBtfError(2, "vmlinux BTF: struct sock has no member 'sk_reuseport_cb'")

    monkeypatch.setattr(attach_sockets, "SocketsIterator", refuse)
    source = SocketSource()
    for _ in range(2):
        with pytest.raises(BpfError, match="sk_reuseport_cb"):
            source.read(ctx({40: "socket_filter"}))
    assert len(attempts) == 1


class MissingMemberBtf:
    """A vmlinux BTF whose ``struct sock`` lacks ``sk_reuseport_cb``."""

    def prefetch(self, names: object) -> None:
        pass

    def func_id(self, name: str) -> int:
        return 1

    def member_offset(self, struct: str, member: str) -> int:
        if (struct, member) == ("sock", "sk_reuseport_cb"):
            raise VmlinuxBtfError(2, f"vmlinux BTF: struct {struct} has no member {member!r}")
        return 8


def test_layout_names_the_missing_member() -> None:
    with pytest.raises(BpfError, match="struct sock has no member 'sk_reuseport_cb'"):
        SocketsLayout.from_btf(MissingMemberBtf())  # type: ignore[arg-type]


def test_program_builds() -> None:
    lay = SocketsLayout(**dict.fromkeys(SocketsLayout.__slots__, 8))  # type: ignore[arg-type]
    insns = sockets.build_program(lay)
    assert asm.assemble(insns)
    assert insns[-1] == asm.exit_()


def test_sockets_is_a_default_source_after_the_links() -> None:
    sources = {s.name: (i, s) for i, s in enumerate(default_sources())}
    index, sockets = sources["sockets"]
    assert index > sources["links"][0] and sockets.close is not None


class FakeStat:
    def __init__(self, inode: int) -> None:
        self.st_ino = inode


def test_refused_in_a_pid_namespace_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # The records carry the host's pids: in another pid namespace they would name other
    # processes (or none), so the iterator refuses before loading anything.
    monkeypatch.setattr(sockets.os, "stat", lambda path: FakeStat(4026532999))
    with pytest.raises(BpfError, match="pid namespace of its own"):
        sockets.SocketsIterator(SocketsLayout(**dict.fromkeys(SocketsLayout.__slots__, 8)))


def test_host_pid_namespace_passes_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sockets.os, "stat", lambda path: FakeStat(0xEFFFFFFC))
    sockets._check_pid_namespace()


def test_discovery_names_the_sources_own_programs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(attach_sockets, "SocketsIterator", FakeIterator)
    src = SocketSource()
    discovery = AttachmentDiscovery(
        sources=[Source("sockets", src.read, src.close, src.own_programs)],
        names=Names(cgroup_root="/sys/fs/cgroup"),
    )
    assert discovery.own_program_ids() == frozenset()  # nothing loaded before it is needed
    discovery.get({40: "socket_filter"})
    assert discovery.own_program_ids() == {77}
    discovery.close()
    assert discovery.own_program_ids() == frozenset()
