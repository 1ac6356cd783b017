"""The cheap record construction and the reuse of unchanged records and samples.

Both are performance measures: what they return must be indistinguishable from the plain
dataclass constructor, ``dataclasses.replace`` and ``snapshot.derive``.
"""

from __future__ import annotations

import pickle
from dataclasses import FrozenInstanceError, astuple, dataclass, fields, replace

import pytest

from otel_bpf.kernel import record_builder
from otel_bpf.kernel.record_builder import RecordExtras, program_record
from otel_bpf.records import MapRecord, Owner, ProgramRecord, StatsState
from otel_bpf.snapshot import build_snapshot, derive

ON = StatsState(ours=True, sysctl=False, others=False)
VALUES = (7, "xdp", 6, "name", "ab" * 8, 100, 4, 0, 1.5e9, 0, 12, 96, 80, (3, 4), 9, 8192)


def prog(pid: int = 7, run_cnt: int = 4, run_time_ns: int = 100) -> ProgramRecord:
    return program_record(pid, *VALUES[1:5], run_time_ns, run_cnt, *VALUES[7:])


def test_program_record_is_the_dataclass_in_every_respect() -> None:
    # The slot stores written from the record's fields are in use, not the constructor.
    assert program_record.__code__.co_filename == "<ProgramRecord builders>"
    fast = program_record(*VALUES)
    slow = ProgramRecord(*VALUES)
    assert type(fast) is ProgramRecord
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert astuple(fast) == astuple(slow)
    assert fast.owners is None and fast.maps is None
    with pytest.raises(FrozenInstanceError):
        fast.run_cnt = 5  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(fast)) == slow
    assert replace(fast, run_cnt=5) == replace(slow, run_cnt=5)


def test_program_record_takes_owners_and_maps() -> None:
    owner = Owner(pid=1, comm="c", executable="e", via=("prog",))
    m = MapRecord(
        id=3, type="hash", name="m", key_size=4, value_size=8, max_entries=1, memlock_bytes=None
    )
    full = program_record(*VALUES, (owner,), (m,))
    assert full == ProgramRecord(*VALUES, owners=(owner,), maps=(m,))


def test_field_list_matches_the_dataclass() -> None:
    assert tuple(f.name for f in fields(ProgramRecord)) == record_builder._FIELDS


def test_extras_reuse_the_record_while_nothing_changed() -> None:
    extras = RecordExtras()
    base = prog()
    owner = Owner(pid=1, comm="c", executable="e", via=("prog",))
    m3 = MapRecord(
        id=3, type="hash", name="m", key_size=4, value_size=8, max_entries=1, memlock_bytes=None
    )
    (first,) = extras.attach([base], {7: (owner,)}, {3: m3})
    assert first == replace(base, owners=(owner,), maps=(m3,))
    (again,) = extras.attach([base], {7: (owner,)}, {3: m3})
    assert again is first
    (moved,) = extras.attach([base], {}, {3: m3})
    assert moved == replace(base, owners=(), maps=(m3,)) and moved is not first
    ran = prog(run_cnt=5)
    (new,) = extras.attach([ran], {}, None)
    assert new == replace(ran, owners=(), maps=None)


def snap(prev, records, t, cpus=2):  # type: ignore[no-untyped-def]
    return build_snapshot(prev, records, monotonic=t, wall_time=t, online_cpus=cpus, stats=ON)


@pytest.mark.parametrize("cpus", [2, 0])
def test_idle_samples_are_reused_and_equal_to_derive(cpus: int) -> None:
    idle, busy = prog(1), prog(2)
    s1 = snap(None, [idle, busy], 10.0, cpus)
    s2 = snap(s1, [idle, busy], 11.0, cpus)  # no program ran; rates 0 now
    s3 = snap(s2, [idle, prog(2, run_cnt=9, run_time_ns=900)], 12.5, cpus)
    s4 = snap(s3, [idle, s3.programs[1].program], 13.0, cpus)
    for prev, cur in ((s1, s2), (s2, s3), (s3, s4)):
        assert cur.elapsed is not None
        for sample in cur.programs:
            before = prev.get(sample.id)
            assert before is not None
            assert sample == derive(before.program, sample.program, cur.elapsed, cpus)
    assert s3.programs[0] is s2.programs[0]  # idle, and already idle before: reused
    assert s4.programs[0] is s2.programs[0]
    assert s2.programs[0] is not s1.programs[0]  # the first sample has no rates yet
    assert s4.programs[1] is not s3.programs[1]  # it ran in the period before: rates change
    assert s4.programs[1].events_per_sec == 0.0


def test_an_equal_but_new_record_is_derived_again() -> None:
    s1 = snap(None, [prog(1)], 1.0)
    s2 = snap(s1, [prog(1)], 2.0)
    s3 = snap(s2, [prog(1)], 3.0)
    assert s3.programs[0] == s2.programs[0] and s3.programs[0] is not s2.programs[0]


def distinct_fields_record() -> ProgramRecord:
    """Every field its own value, so a field stored into another's slot shows."""
    owner = Owner(pid=1, comm="c", executable="e", via=("prog",))
    m = MapRecord(
        id=3, type="hash", name="m", key_size=4, value_size=8, max_entries=1, memlock_bytes=None
    )
    return ProgramRecord(
        id=7, type="xdp", type_id=6, name="name", tag="ab" * 8, run_time_ns=100, run_cnt=4,
        recursion_misses=2, load_time=1.5e9, uid=1000, verified_insns=12, xlated_size=96,
        jited_size=80, map_ids=(3, 4), btf_id=9, memlock_bytes=8192, owners=(owner,), maps=(m,),
    )  # fmt: skip


def test_with_counters_is_replace() -> None:
    old = distinct_fields_record()
    new = record_builder.with_counters(old, 500, 9, 3)
    assert type(new) is ProgramRecord
    assert new == replace(old, run_time_ns=500, run_cnt=9, recursion_misses=3)
    assert old.run_cnt == 4  # the old record is untouched
    with pytest.raises(FrozenInstanceError):
        new.run_cnt = 5  # type: ignore[misc]


def test_update_counters_keeps_unchanged_records_and_copies_the_others() -> None:
    update = record_builder.update_counters
    a = distinct_fields_record()
    b = replace(a, id=8, name="other", memlock_bytes=None, owners=None, maps=None)
    records = [a, b]
    statics = [record_builder.static_fields(r) for r in records]
    out = update(records, statics, [100, 700], [4, 9], [2, 0])
    assert out[0] is a  # counters unchanged: the very same record
    assert out[1] == replace(b, run_time_ns=700, run_cnt=9, recursion_misses=0)
    assert type(out[1]) is ProgramRecord
    assert hash(out[1]) == hash(replace(b, run_time_ns=700, run_cnt=9, recursion_misses=0))
    (misses_only,) = update([a], statics[:1], [100], [4], [5])
    assert misses_only == replace(a, recursion_misses=5) and misses_only is not a
    with pytest.raises(ValueError, match="zip"):
        update(records, statics, [1], [1], [1])  # columns of another length: a bug


def test_the_unfrozen_class_never_leaks() -> None:
    made = [
        program_record(*VALUES),
        record_builder.with_counters(prog(), 1, 2, 3),
        *record_builder.update_counters(
            [prog()], [record_builder.static_fields(prog())], [1], [2], [3]
        ),
    ]
    for r in made:
        assert type(r) is ProgramRecord
        with pytest.raises(FrozenInstanceError):
            del r.name  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class OtherRecord:
    """A record with other fields than ProgramRecord's: what a change to records.py makes."""

    id: int
    run_time_ns: int
    run_cnt: int
    recursion_misses: int | None
    per_cpu: tuple[int, ...]
    attach: str | None = None


class _UnfrozenOther(OtherRecord):
    __slots__ = ()
    __setattr__ = object.__setattr__
    __delattr__ = object.__delattr__
    __init__ = object.__init__


def test_builders_follow_the_declared_fields() -> None:
    """A field added to (or removed from) the record is stored by every builder: the builders
    are written from the declaration, there is no second list to forget."""
    build, with_counters, update = record_builder.derive_builders(OtherRecord, _UnfrozenOther)
    made = build(1, 2, 3, 4, (5, 6))
    assert type(made) is OtherRecord and made == OtherRecord(1, 2, 3, 4, (5, 6))
    assert build(1, 2, 3, 4, (5,), "xdp").attach == "xdp"
    assert with_counters(made, 7, 8, 9) == replace(made, run_time_ns=7, run_cnt=8,
                                                    recursion_misses=9)  # fmt: skip
    statics = [(made.id, made.per_cpu, made.attach)]
    (copied,) = update([made], statics, [7], [8], [None])
    assert copied == replace(made, run_time_ns=7, run_cnt=8, recursion_misses=None)


def test_a_record_whose_slots_drift_from_its_fields_is_refused() -> None:
    @dataclass(frozen=True)
    class Unslotted:
        id: int

    with pytest.raises(TypeError, match="slots"):
        record_builder.derive_builders(Unslotted, Unslotted)
