"""The self-check's comparison of iterator records with two syscall readings around them."""

from __future__ import annotations

from dataclasses import replace

from otel_bpf.kernel.iterator.progs import RECORD, ProgRecordRaw, decode
from otel_bpf.kernel.iterator.selfcheck import compare
from otel_bpf.records import ProgramRecord


def rec(prog_id: int, name: str = "prog", cnt: int = 10, ns: int = 1000) -> ProgramRecord:
    return ProgramRecord(
        id=prog_id, type="socket_filter", type_id=1, name=name, tag="00" * 8, run_time_ns=ns,
        run_cnt=cnt, recursion_misses=0, load_time=1.0, uid=0, verified_insns=2,
        xlated_size=16, jited_size=20, map_ids=(), btf_id=0, memlock_bytes=4096,
    )  # fmt: skip


def raw(r: ProgramRecord, **changes: object) -> ProgRecordRaw:
    out = ProgRecordRaw(r.id, r.type_id, r.name[:15], 5, r.run_time_ns, r.run_cnt, 0)
    return out._replace(**changes)


def test_equal_views_agree() -> None:
    a = [rec(1), rec(2, name="a_name_longer_than_15")]
    assert compare(a, [raw(r) for r in a], a, a) == []


def test_counters_compared_only_when_both_syscall_readings_agree() -> None:
    before = [rec(1, cnt=10)]
    after = [rec(1, cnt=12)]  # ran in between: the iterator may have seen 10, 11 or 12
    assert compare(before, [raw(before[0], run_cnt=11)], before, after) == []
    problems = compare(before, [raw(before[0], run_cnt=11)], before, before)
    assert problems == ["program 1: run_cnt 11 != 10"]


def test_missing_wrong_type_and_wrong_name_are_reported() -> None:
    a = [rec(1), rec(2), rec(3, name="short")]
    iterated = [raw(a[1], type_id=6), raw(a[2], name="other")]
    merged = [a[1], a[2]]
    problems = compare(a, iterated, merged, a)
    assert "program 1 (prog) missing from the iterator's records" in problems
    assert "program 2: type 6 != 1" in problems
    assert "program 3: name 'other' != 'short'" in problems


def test_programs_seen_by_one_syscall_reading_only_are_ignored() -> None:
    loaded_later = rec(9)
    assert compare([rec(1)], [raw(rec(1))], [rec(1)], [rec(1), loaded_later]) == []
    assert compare([rec(1)], [raw(rec(1))], [rec(1)], [rec(1)], ignore=frozenset({1})) == []
    merged_wrong = [replace(rec(1), name="x")]
    assert compare([rec(1)], [raw(rec(1))], merged_wrong, [rec(1)]) == [
        "program 1: full name 'x' != 'prog'"
    ]


def test_decode_records() -> None:
    data = RECORD.pack(7, 1, b"abc\0\0garbage", 5, 100, 2, 1) + b"\0" * 10  # torn tail
    assert decode(data) == [ProgRecordRaw(7, 1, "abc", 5, 100, 2, 1)]


def test_per_cpu_counters_must_sum_to_the_totals() -> None:
    from otel_bpf.records import CpuCounters

    a = [rec(1, cnt=10, ns=1000)]
    good = [replace(a[0], per_cpu=(CpuCounters(0, 600, 6, 0), CpuCounters(1, 400, 4, 0)))]
    assert compare(a, [raw(a[0])], good, a) == []
    bad = [replace(a[0], per_cpu=(CpuCounters(0, 600, 6, 0), CpuCounters(1, 300, 4, 0)))]
    assert compare(a, [raw(a[0])], bad, a) == ["program 1: per-CPU sums (10, 900, 0) != its totals"]
