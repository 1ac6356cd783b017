"""The iterator path's merge of a pass's counters with the static fields, no kernel needed.

The pass bytes are packed here as the iterator program writes them, and the syscall-path
look-up of a new program (``read_one``) is replaced by a table, so every branch of the merge
(same programs as last pass, programs loaded, unloaded, replaced, unreadable, own programs,
memlock on and off, an unsorted walk) is checked against ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from otel_bpf.kernel.errors import BpfError, BpfNotFoundError
from otel_bpf.kernel.iterator.merge import PassMerger
from otel_bpf.kernel.iterator.progs import RECORD, PassColumns
from otel_bpf.records import ProgramRecord

Row = tuple[int, int, int, int, int]  # id, load time, run time, run count, recursion misses


def static(prog_id: int, load_time_ns: int) -> ProgramRecord:
    """What the syscall path would read for a program (its counters as of that moment)."""
    return ProgramRecord(
        id=prog_id, type="xdp", type_id=6, name=f"prog_{prog_id}", tag="ab" * 8,
        run_time_ns=1, run_cnt=1, recursion_misses=0, load_time=1e9 + load_time_ns / 1e9,
        uid=0, verified_insns=9, xlated_size=72, jited_size=60, map_ids=(prog_id + 100,),
        btf_id=0, memlock_bytes=4096,
    )  # fmt: skip


def pack(rows: list[Row]) -> bytes:
    return b"".join(
        RECORD.pack(pid, 6, b"prog_%d" % pid, lt, ns, cnt, misses)
        for pid, lt, ns, cnt, misses in rows
    )


def expected(row: Row, memlock: bool = True) -> ProgramRecord:
    pid, lt, ns, cnt, misses = row
    want = replace(static(pid, lt), run_time_ns=ns, run_cnt=cnt, recursion_misses=misses)
    return want if memlock else replace(want, memlock_bytes=None)


class Kernel:
    """The programs ``read_one`` finds, and the ids it was asked for."""

    def __init__(self) -> None:
        self.load_times: dict[int, int] = {}
        self.failing: dict[int, BpfError] = {}
        self.gone: set[int] = set()  # listed by the walk, unloaded before the look-up
        self.asked: list[int] = []

    def read_one(self, prog_id: int, *, boot_offset: float | None = None) -> ProgramRecord:
        self.asked.append(prog_id)
        if prog_id in self.failing:
            raise self.failing[prog_id]
        if prog_id in self.gone:
            raise BpfNotFoundError(2, f"program {prog_id}")
        return static(prog_id, self.load_times[prog_id])


@pytest.fixture
def kernel() -> Kernel:
    return Kernel()


def merger(kernel: Kernel) -> PassMerger:
    """The iterator path's merge, its syscall look-up answered by ``kernel``."""
    return PassMerger(read_static=kernel.read_one, boot_offset=lambda: 1e9)


def merge(
    source: PassMerger,
    kernel: Kernel,
    rows: list[Row],
    memlock: bool = True,
    skip: frozenset[int] = frozenset(),
) -> tuple[list[ProgramRecord], list[str]]:
    for pid, lt, *_ in rows:
        kernel.load_times.setdefault(pid, lt)
    kernel.asked.clear()
    return source.merge(pack(rows), memlock, skip)


def test_same_programs_keep_idle_records_and_copy_the_others(kernel: Kernel) -> None:
    source = merger(kernel)
    rows = [(3, 30, 100, 2, 0), (5, 50, 0, 0, 0), (9, 90, 7, 1, 0)]
    first, errors = merge(source, kernel, rows)
    assert errors == [] and kernel.asked == [3, 5, 9]
    assert first == [expected(r) for r in rows]
    assert all(type(r) is ProgramRecord for r in first)

    idle, _ = merge(source, kernel, rows)
    assert kernel.asked == []  # no syscall for a known program
    assert all(a is b for a, b in zip(idle, first, strict=True))

    ran = [(3, 30, 180, 3, 0), rows[1], (9, 90, 7, 1, 4)]
    busy, _ = merge(source, kernel, ran)
    assert busy == [expected(r) for r in ran]
    assert busy[1] is first[1] and busy[0] is not first[0] and busy[2] is not first[2]


def test_loaded_unloaded_and_replaced_programs(kernel: Kernel) -> None:
    source = merger(kernel)
    merge(source, kernel, [(3, 30, 1, 1, 0), (5, 50, 1, 1, 0)])
    kept, _ = merge(source, kernel, [(3, 30, 1, 1, 0), (5, 50, 1, 1, 0)])
    # 5 unloaded, 8 loaded, and 3's id now names another program (another load time).
    kernel.load_times[3] = 33
    rows = [(3, 33, 0, 0, 0), (8, 80, 5, 5, 0)]
    records, errors = merge(source, kernel, rows)
    assert errors == [] and kernel.asked == [3, 8]
    assert records == [expected(r) for r in rows]
    assert records[0] is not kept[0]
    assert set(source.known_ids) == {3, 8}  # 5 is forgotten


def test_unreadable_programs_are_left_out_and_tried_again(kernel: Kernel) -> None:
    source = merger(kernel)
    kernel.failing[5] = BpfError(13, "program 5: permission denied")
    rows = [(3, 30, 1, 1, 0), (5, 50, 1, 1, 0), (7, 70, 1, 1, 0)]
    kernel.gone.add(6)  # silently left out
    records, errors = merge(source, kernel, rows[:2] + [(6, 60, 1, 1, 0)] + rows[2:])
    assert [r.id for r in records] == [3, 7]
    assert len(errors) == 1 and errors[0].startswith("program 5:")
    records, errors = merge(source, kernel, rows)
    assert kernel.asked == [5]  # only the one that failed is read again
    assert [r.id for r in records] == [3, 7] and len(errors) == 1
    del kernel.failing[5]
    records, errors = merge(source, kernel, rows)
    assert errors == [] and records == [expected(r) for r in rows]


def test_own_programs_are_skipped_wherever_they_are(kernel: Kernel) -> None:
    source = merger(kernel)
    rows = [(2, 20, 1, 1, 0), (4, 40, 1, 1, 0), (6, 60, 1, 1, 0), (8, 80, 1, 1, 0)]
    records, _ = merge(source, kernel, rows, skip=frozenset({2, 8, 99}))
    assert [r.id for r in records] == [4, 6]
    again, _ = merge(source, kernel, rows, skip=frozenset({2, 8}))
    assert again[0] is records[0] and again[1] is records[1]
    everything, _ = merge(source, kernel, rows)
    assert everything == [expected(r) for r in rows]
    assert everything[1] is records[0]
    fewer, _ = merge(source, kernel, rows, skip=frozenset({6}))
    assert [r.id for r in fewer] == [2, 4, 8]


def test_memlock_off_and_on_again(kernel: Kernel) -> None:
    source = merger(kernel)
    rows = [(3, 30, 1, 1, 0)]
    with_memlock, _ = merge(source, kernel, rows)
    without, _ = merge(source, kernel, rows, memlock=False)
    assert without == [expected(rows[0], memlock=False)]
    ran = [(3, 30, 2, 2, 0)]
    assert merge(source, kernel, ran, memlock=False)[0] == [expected(ran[0], memlock=False)]
    back, _ = merge(source, kernel, ran)
    assert back == [expected(ran[0])] and kernel.asked == []  # memlock kept from the first read
    assert with_memlock[0].memlock_bytes == back[0].memlock_bytes == 4096


def test_an_unsorted_walk_still_gives_records_by_id(kernel: Kernel) -> None:
    source = merger(kernel)
    rows = [(9, 90, 1, 1, 0), (3, 30, 2, 2, 0), (5, 50, 3, 3, 0)]
    records, _ = merge(source, kernel, rows, skip=frozenset({5}))
    assert [r.id for r in records] == [3, 9]
    records, _ = merge(source, kernel, rows)
    assert records == [expected(r) for r in sorted(rows)]
    assert kernel.asked == [5]


def test_pass_columns() -> None:
    rows = [(3, 30, 100, 2, 0), (5, 50, 0, 0, 1), (9, 90, 7, 1, 0)]
    columns = PassColumns(pack(rows) + b"\0" * 20)  # a torn tail is ignored
    assert len(columns) == 3
    assert columns.ids.tolist() == [3, 5, 9]
    assert columns.load_times.tolist() == [30, 50, 90]
    assert columns.counters() == ([100, 0, 7], [2, 0, 1], [0, 1, 0])
    assert columns.counters([0, 2]) == ([0], [0], [1])
    assert columns.rows_of([9, 4, 3]) == [0, 2]
    assert PassColumns(pack(rows[::-1])).rows_of([9, 3]) == [0, 2]  # unsorted: found anyway
    moved = [(3, 30, 1, 1, 1), (5, 50, 2, 2, 2), (9, 90, 3, 3, 3)]
    assert columns.same_programs(PassColumns(pack(moved)))
    assert not columns.same_programs(PassColumns(pack([*moved[:2], (9, 91, 3, 3, 3)])))
    assert not columns.same_programs(PassColumns(pack(moved[:2])))
    assert len(PassColumns(b"")) == 0
