"""Decoding the ``iter/task_file`` program's output and grouping it by program (the grouping
the /proc scan shares), no kernel."""

from __future__ import annotations

from array import array

import pytest

from otel_bpf.kernel import owners as owners_mod
from otel_bpf.kernel.iterator.owners import (
    KIND_LINK,
    KIND_TASK,
    LINK_ENTRY,
    MARK,
    TASK_HEADER,
    decode,
    owners_from_records,
)
from otel_bpf.kernel.owners import HELD_BY_PROG, group_by_program
from otel_bpf.records import UNKNOWN_WORKLOAD, Owner, Workload


def task(tgid: int, comm: bytes = b"proc") -> bytes:
    return TASK_HEADER.pack(MARK, KIND_TASK, comm.ljust(16, b"\0"), tgid)


def progs(*ids: int) -> bytes:
    return array("I", ids).tobytes()


def link(prog_id: int) -> bytes:
    return LINK_ENTRY.pack(MARK, KIND_LINK, prog_id)


@pytest.fixture(autouse=True)
def executables(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """process_executable without /proc: ``exe<pid>``; the pids asked, in order (the grouping
    both sampling paths share lives in ``otel_bpf.kernel.owners``)."""
    asked: list[int] = []

    def fake(pid: int) -> str:
        asked.append(pid)
        return f"exe{pid}"

    monkeypatch.setattr(owners_mod, "process_executable", fake)
    return asked


@pytest.fixture(autouse=True)
def cgroups(monkeypatch: pytest.MonkeyPatch) -> dict[int, str | None]:
    """read_cgroup without /proc: the text set here for a pid (None: the process is gone),
    ``0::/`` for the others; the pids read, in order, go to :data:`CGROUP_READS`."""
    texts: dict[int, str | None] = {}
    CGROUP_READS.clear()

    def fake(pid: int) -> str | None:
        CGROUP_READS.append(pid)
        return texts.get(pid, "0::/\n")

    monkeypatch.setattr(owners_mod, "read_cgroup", fake)
    return texts


CGROUP_READS: list[int] = []


def test_decode_splits_the_stream_into_tasks() -> None:
    data = task(10, b"agent") + progs(5, 6) + link(7) + progs(8) + task(11) + link(9)
    tasks = decode(data)
    assert [(t.tgid, t.name, list(t.prog_ids), t.link_ids) for t in tasks] == [
        (10, "agent", [5, 6, 8], [7]),
        (11, "proc", [], [9]),
    ]


def test_zero_bytes_across_two_ids_are_not_a_record_start() -> None:
    # 5 then 256: 05 00 00 00 | 00 01 00 00, four zero bytes from offset 1.
    ids = [5, 256, 1, 1 << 24, 65536, 3]
    assert list(decode(task(1) + progs(*ids))[0].prog_ids) == ids


def test_a_torn_tail_or_an_unknown_record_ends_the_decoding() -> None:
    data = task(1) + progs(5) + task(2) + progs(6)
    assert [t.tgid for t in decode(data[:-2])] == [1, 2]
    assert list(decode(data[:-2])[1].prog_ids) == []
    assert decode(data[: len(task(1)) - 1]) == []
    assert decode(progs(5) + task(1)) == []  # entries before any task
    assert decode(LINK_ENTRY.pack(MARK, 99, 5)) == []
    assert decode(link(5)) == []  # a link before any task


def held(owners: dict[int, tuple[Owner, ...]]) -> dict[int, list[tuple[int, tuple[str, ...]]]]:
    return {k: [(o.pid, o.via) for o in v] for k, v in owners.items()}


def test_one_owner_per_process_sorted_by_pid_with_every_way_held() -> None:
    data = task(30) + progs(1) + task(20) + link(1) + progs(1, 2) + task(10) + link(2)
    owners, _ = owners_from_records(data)
    assert held(owners) == {
        1: [(20, ("link", "prog")), (30, ("prog",))],
        2: [(10, ("link",)), (20, ("prog",))],
    }
    o = owners[1][0]
    assert (o.comm, o.executable) == ("proc", "exe20")


def test_one_entry_per_process_however_many_fds() -> None:
    # Two fds of one program in a task, two links to another, and the task again (a thread
    # with its own files) holding them the other way.
    data = (
        task(10)
        + progs(1, 1, 2)
        + link(3)
        + link(3)
        + task(11)
        + progs(1)
        + task(10)
        + progs(1, 3)
        + link(2)
        + link(4)
    )
    owners, _ = owners_from_records(data)
    assert held(owners) == {
        1: [(10, ("prog",)), (11, ("prog",))],
        2: [(10, ("link", "prog"))],
        3: [(10, ("link", "prog"))],
        4: [(10, ("link",))],
    }


def test_the_same_ways_held_share_one_owner() -> None:
    data = task(10) + link(1) + progs(1, 2) + link(2) + link(3) + progs(4)
    owners, cache = owners_from_records(data)
    assert owners[1][0] is owners[2][0]
    assert owners[1][0].via == ("link", "prog")
    assert owners[3][0].via == ("link",) and owners[4][0].via == ("prog",)
    assert len(cache) == 3


def test_a_big_task_after_a_small_one_keeps_both() -> None:
    # The larger of the two groupings is the one kept and added to: either order works.
    data = task(1) + progs(7, 8) + task(2) + progs(*range(1, 100))
    owners, _ = owners_from_records(data)
    assert len(owners) == 99
    assert [o.pid for o in owners[7]] == [1, 2]
    assert [o.pid for o in owners[50]] == [2]


def test_owners_are_reused_across_passes(executables: list[int]) -> None:
    first, cache = group_by_program(decode(task(10) + progs(1, 2)))
    second, cache = group_by_program(decode(task(10) + progs(2, 3)), cache)
    assert second[2][0] is first[1][0]
    assert executables == [10]
    # A new comm is a new owner (exec); a holder gone from a pass leaves the cache.
    third, cache = group_by_program(decode(task(10, b"renamed") + progs(3)), cache)
    assert third[3] == (Owner(10, "renamed", "exe10", ("prog",), Workload(cgroup="/")),)
    assert list(cache) == [(10, HELD_BY_PROG, b"renamed".ljust(16, b"\0"))]
    # An owner holding a program both ways is reused too.
    both = task(10) + progs(5) + link(5)
    fourth, cache = group_by_program(decode(both), cache)
    fifth, cache = group_by_program(decode(both), cache)
    assert fifth[5][0] is fourth[5][0] and fifth[5][0].via == ("link", "prog")


def test_an_empty_pass() -> None:
    assert owners_from_records(b"") == ({}, {})


DOCKER_ID = "ec8bf5994520b1e0285709dda72fc9f0069f488a7b56b7c5ca9660c3f99dcf73"


def test_each_owner_carries_its_workload_read_once_per_process_per_pass(
    cgroups: dict[int, str | None],
) -> None:
    cgroups[10] = f"0::/system.slice/docker-{DOCKER_ID}.scope\n"
    cgroups[11] = "0::/system.slice/sshd.service\n"
    data = task(10) + progs(1, 2) + link(1) + link(3) + task(11) + progs(2) + task(10) + progs(4)
    owners, _ = owners_from_records(data)
    assert sorted(CGROUP_READS) == [10, 11]
    in_docker = owners[1][0].workload
    assert in_docker.container_id == DOCKER_ID
    assert in_docker.cgroup == f"/system.slice/docker-{DOCKER_ID}.scope"
    assert all(o.workload is in_docker for p in (1, 3, 4) for o in owners[p])
    assert owners[2][1].workload == Workload(cgroup="/system.slice/sshd.service")


def test_a_process_gone_before_its_cgroup_is_read_has_an_unknown_workload(
    cgroups: dict[int, str | None],
) -> None:
    cgroups[10] = None
    owners, _ = owners_from_records(task(10) + progs(1))
    assert owners[1][0].workload is UNKNOWN_WORKLOAD
    assert owners[1][0].pid == 10  # still an owner


def test_an_owner_moved_to_another_cgroup_is_a_new_owner(
    cgroups: dict[int, str | None], executables: list[int]
) -> None:
    first, cache = group_by_program(decode(task(10) + progs(1)))
    second, cache = group_by_program(decode(task(10) + progs(1)), cache)
    assert second[1][0] is first[1][0]  # same cgroup: the same owner object
    cgroups[10] = f"0::/docker/{DOCKER_ID}\n"
    third, cache = group_by_program(decode(task(10) + progs(1)), cache)
    assert third[1][0].workload.container_id == DOCKER_ID
    assert first[1][0].workload.container_id is None
    fourth, cache = group_by_program(decode(task(10) + progs(1)), cache)
    assert fourth[1][0] is third[1][0]
    assert CGROUP_READS == [10, 10, 10, 10]  # once per pass
