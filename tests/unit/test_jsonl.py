"""The --json schema: keys and order, figures null until known, safe escaping of names."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otel_bpf.cli import jsonl
from otel_bpf.records import Owner, ProgramRecord, StatsState, Workload
from otel_bpf.snapshot import Snapshot, build_snapshot

STATS_ON = StatsState(ours=True, sysctl=False, others=False)
CONTAINER = "05c45fae4a1941581616a248d2611ade321b80a34b2d558edfb7adec56efe055"
POD = "26988ab4-5b95-45c2-bf6d-29387c585ff9"


def record(prog_id: int = 7, run_cnt: int = 0, run_time_ns: int = 0, **kw: object) -> ProgramRecord:
    base = ProgramRecord(
        id=prog_id,
        type="socket_filter",
        type_id=1,
        name="otel_demo_sock",
        tag="0123456789abcdef",
        run_time_ns=run_time_ns,
        run_cnt=run_cnt,
        recursion_misses=0,
        load_time=1_795_000_000.5,
        uid=0,
        verified_insns=12,
        xlated_size=96,
        jited_size=64,
        map_ids=(3, 4),
        btf_id=0,
        memlock_bytes=4096,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def two_ticks(first: ProgramRecord, second: ProgramRecord) -> tuple[Snapshot, Snapshot]:
    a = build_snapshot(
        None, [first], monotonic=100.0, wall_time=1_795_317_915.25, online_cpus=2, stats=STATS_ON
    )
    b = build_snapshot(
        a, [second], monotonic=102.0, wall_time=1_795_317_917.25, online_cpus=2, stats=STATS_ON
    )
    return a, b


def test_keys_in_schema_order_and_first_tick_has_null_rates() -> None:
    a, _ = two_ticks(record(run_cnt=10, run_time_ns=1000), record(run_cnt=10, run_time_ns=1000))
    (line,) = jsonl.snapshot_lines(a)
    obj = json.loads(line)
    assert tuple(obj) == jsonl.FIELDS
    assert obj["timestamp"] == "2026-11-22T03:25:15.250000Z"
    assert obj["seq"] == 1
    assert obj["id"] == 7 and obj["type"] == "socket_filter" and obj["name"] == "otel_demo_sock"
    assert obj["tag"] == "0123456789abcdef"
    assert obj["run_cnt"] == 10 and obj["run_time_ns"] == 1000
    assert obj["load_time"] == "2026-11-18T11:06:40.500000Z"
    assert obj["map_ids"] == [3, 4] and obj["memlock_bytes"] == 4096
    assert obj["total_avg_runtime_ns"] == 100.0
    for key in ("period_avg_runtime_ns", "events_per_sec", "cpu_percent", "cpu_utilization"):
        assert obj[key] is None, key
    assert obj["owners"] is None


def test_second_tick_figures() -> None:
    _, b = two_ticks(
        record(run_cnt=100, run_time_ns=10_000), record(run_cnt=300, run_time_ns=50_000)
    )
    obj = json.loads(jsonl.snapshot_lines(b)[0])
    assert obj["seq"] == 2
    assert obj["events_per_sec"] == 100.0  # 200 runs in 2 s
    assert obj["period_avg_runtime_ns"] == 200.0  # 40 us over 200 runs
    assert obj["cpu_percent"] == 40_000 / 2e9 * 100
    assert obj["cpu_utilization"] == 40_000 / 2e9 / 2


def test_period_without_runs_is_null_not_zero() -> None:
    _, b = two_ticks(record(run_cnt=5, run_time_ns=50), record(run_cnt=5, run_time_ns=50))
    obj = json.loads(jsonl.snapshot_lines(b)[0])
    assert obj["period_avg_runtime_ns"] is None
    assert obj["events_per_sec"] == 0.0


def test_owners_and_kernel_optionals() -> None:
    rec = record(
        owners=(
            Owner(pid=42, comm="agent", executable="agent", via=("link", "prog")),
            Owner(pid=43, comm="ctl", executable="ctl", via=("prog",)),
        ),
        recursion_misses=None,
        verified_insns=None,
        memlock_bytes=None,
    )
    a, _ = two_ticks(rec, rec)
    obj = json.loads(jsonl.snapshot_lines(a)[0])
    assert obj["owners"] == [
        {
            "pid": 42,
            "comm": "agent",
            "via": ["link", "prog"],
            "cgroup": None,
            "container_id": None,
            "pod_uid": None,
        },
        {
            "pid": 43,
            "comm": "ctl",
            "via": ["prog"],
            "cgroup": None,
            "container_id": None,
            "pod_uid": None,
        },
    ]
    assert obj["recursion_misses"] is None and obj["verified_insns"] is None
    assert obj["memlock_bytes"] is None
    no_owners = record(owners=())
    a, _ = two_ticks(no_owners, no_owners)
    assert json.loads(jsonl.snapshot_lines(a)[0])["owners"] == []


def test_owners_name_their_cgroup_container_and_pod() -> None:
    path = (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}"
        f".slice/cri-containerd-{CONTAINER}.scope"
    )
    in_pod = Workload(cgroup=path, container_id=CONTAINER, pod_uid=POD, qos_class="burstable")
    service = Workload(cgroup="/system.slice/agent.service")
    rec = record(
        owners=(
            Owner(pid=42, comm="agent", executable="agent", via=("prog",), workload=in_pod),
            Owner(pid=43, comm="ctl", executable="ctl", via=("prog",), workload=service),
        )
    )
    a, _ = two_ticks(rec, rec)
    owners = json.loads(jsonl.snapshot_lines(a)[0])["owners"]
    assert [(o["cgroup"], o["container_id"], o["pod_uid"]) for o in owners] == [
        (path, CONTAINER, POD),
        ("/system.slice/agent.service", None, None),
    ]
    assert list(owners[0]) == ["pid", "comm", "via", "cgroup", "container_id", "pod_uid"]


def test_a_hostile_cgroup_path_is_escaped() -> None:
    path = "/system.slice/x\x1b]0;pwned\x07\n\u202e.scope"
    rec = record(owners=(Owner(1, "c", "", ("prog",), Workload(cgroup=path)),))
    a, _ = two_ticks(rec, rec)
    (line,) = jsonl.snapshot_lines(a)
    assert all(0x20 <= ord(c) < 0x7F for c in line)
    assert json.loads(line)["owners"][0]["cgroup"] == path


def test_one_line_per_program_and_empty_tick() -> None:
    a = build_snapshot(
        None,
        [record(1), record(2), record(3)],
        monotonic=1.0,
        wall_time=0.0,
        online_cpus=1,
        stats=STATS_ON,
    )
    lines = jsonl.snapshot_lines(a)
    assert [json.loads(x)["id"] for x in lines] == [1, 2, 3]
    assert all("\n" not in x for x in lines)
    empty = build_snapshot(None, [], monotonic=1.0, wall_time=0.0, online_cpus=1, stats=STATS_ON)
    assert jsonl.snapshot_lines(empty) == []


def test_hostile_names_are_escaped() -> None:
    name = "evil\x1b[2J\x07\r\n\x7f\x9b31m\u202e"
    comm = "c\x00m\x1b]0;pwned\x07"
    rec = record(name=name, owners=(Owner(pid=1, comm=comm, executable="", via=("prog",)),))
    a, _ = two_ticks(rec, rec)
    (line,) = jsonl.snapshot_lines(a)
    assert line.isascii()
    assert all(0x20 <= ord(c) < 0x7F for c in line)
    obj = json.loads(line)
    assert obj["name"] == name and obj["owners"][0]["comm"] == comm


def test_non_finite_figures_become_null() -> None:
    a, _ = two_ticks(record(), record())
    sample = replace(a.programs[0], events_per_sec=float("inf"), cpu_percent=float("nan"))
    obj = jsonl.sample_object(sample, a)
    assert obj["events_per_sec"] is None and obj["cpu_percent"] is None
    assert json.loads(jsonl.encode(obj))["cpu_percent"] is None


@given(st.text(), st.text())
def test_any_text_round_trips_as_printable_ascii(name: str, comm: str) -> None:
    rec = record(name=name, owners=(Owner(pid=1, comm=comm, executable="", via=("prog",)),))
    snap = build_snapshot(None, [rec], monotonic=1.0, wall_time=0.0, online_cpus=1, stats=STATS_ON)
    (line,) = jsonl.snapshot_lines(snap)
    assert all(0x20 <= ord(c) < 0x7F for c in line)
    obj = json.loads(line)
    assert obj["name"] == name and obj["owners"][0]["comm"] == comm


def test_only_selected_programs() -> None:
    snap = build_snapshot(
        None,
        [record(1, name="keep_a"), record(2, name="drop"), record(3, name="keep_b")],
        monotonic=1.0,
        wall_time=0.0,
        online_cpus=1,
        stats=STATS_ON,
    )
    lines = jsonl.snapshot_lines(snap, lambda p: p.name.startswith("keep"))
    assert [json.loads(x)["id"] for x in lines] == [1, 3]


def test_every_record_field_is_emitted_or_excluded() -> None:
    names = {f.name for f in fields(ProgramRecord)}
    emitted = names & set(jsonl.FIELDS)
    assert emitted | set(jsonl.RECORD_EXCLUDED) == names
    assert not emitted & set(jsonl.RECORD_EXCLUDED)
    a, _ = two_ticks(record(), record())
    obj = jsonl.sample_object(a.programs[0], a)
    unconverted = emitted - set(jsonl.RECORD_CONVERSIONS)
    assert {name: obj[name] for name in unconverted} == {
        name: getattr(a.programs[0].program, name) for name in unconverted
    }


@dataclass(frozen=True, slots=True)
class _RecordWithNewField(ProgramRecord):
    new_counter: int = 0


def test_a_new_record_field_fails_until_emitted_or_excluded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(TypeError, match="new_counter"):
        jsonl.derive_sample_object(_RecordWithNewField)
    monkeypatch.setattr(jsonl, "RECORD_EXCLUDED", {**jsonl.RECORD_EXCLUDED, "new_counter": "x"})
    jsonl.derive_sample_object(_RecordWithNewField)
    monkeypatch.setattr(jsonl, "FIELDS", (*jsonl.FIELDS, "new_counter"))
    with pytest.raises(TypeError, match="new_counter"):
        jsonl.derive_sample_object(_RecordWithNewField)  # emitted and excluded
    monkeypatch.setattr(jsonl, "RECORD_EXCLUDED", {})
    with pytest.raises(TypeError, match="type_id"):
        jsonl.derive_sample_object(_RecordWithNewField)


def test_a_schema_key_with_no_source_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "FIELDS", (*jsonl.FIELDS, "no_such_key"))
    with pytest.raises(TypeError, match="no_such_key"):
        jsonl.derive_sample_object()


def test_new_record_field_in_schema_is_written_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonl, "FIELDS", (*jsonl.FIELDS, "new_counter"))
    sample_object = jsonl.derive_sample_object(_RecordWithNewField)
    base = record()
    values = {f.name: getattr(base, f.name) for f in fields(ProgramRecord)}
    rec = _RecordWithNewField(**values, new_counter=5)  # type: ignore[arg-type]
    a, _ = two_ticks(rec, rec)
    obj = sample_object(a.programs[0], a)
    assert list(obj) == list(jsonl.FIELDS) and obj["new_counter"] == 5
