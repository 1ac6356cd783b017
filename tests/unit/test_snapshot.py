"""Snapshots: figures against the previous pass, sequence, elapsed time, lookups."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

import pytest
from socket_filter_records import socket_filter as prog

from otel_bpf.records import ProgramRecord, StatsState
from otel_bpf.snapshot import Snapshot, build_snapshot

ON = StatsState(ours=True, sysctl=False, others=False)


def snap(prev: Snapshot | None, records: list[ProgramRecord], t: float, cpus: int = 2) -> Snapshot:
    return build_snapshot(
        prev, records, monotonic=t, wall_time=1e9 + t, online_cpus=cpus, stats=ON, errors=("e",)
    )


def test_first_snapshot() -> None:
    s = snap(None, [prog(1, 10, 1000), prog(2)], t=5.0)
    assert s.seq == 1 and s.elapsed is None and s.online_cpus == 2
    assert s.stats is ON and s.sampling_path == "syscall" and s.errors == ("e",)
    one = s.get(1)
    assert one is not None and one.id == 1
    assert one.events_per_sec is None and one.cpu_percent is None
    assert one.cpu_utilization is None and one.period_avg_runtime_ns is None
    assert one.total_avg_runtime_ns == 100.0
    assert s.get(3) is None


def test_second_snapshot_figures() -> None:
    a = snap(None, [prog(1, 10, 1000)], t=5.0)
    b = snap(a, [prog(1, 210, 401_000)], t=7.0, cpus=4)
    assert b.seq == 2 and b.elapsed == pytest.approx(2.0)
    s = b.get(1)
    assert s is not None
    assert s.events_per_sec == pytest.approx(100.0)
    assert s.period_avg_runtime_ns == pytest.approx(2000.0)
    assert s.cpu_percent == pytest.approx(400_000 / 2e9 * 100)
    assert s.cpu_utilization == pytest.approx(400_000 / 2e9 / 4)


def test_new_and_gone_programs() -> None:
    a = snap(None, [prog(1, 10, 1000)], t=0.0)
    b = snap(a, [prog(2, 5, 50)], t=1.0)
    assert b.get(1) is None
    two = b.get(2)
    assert two is not None and two.events_per_sec is None
    c = snap(b, [prog(2, 15, 150), prog(1, 0, 0)], t=2.0)
    again = c.get(1)
    # Id 1 is back with fresh counters: a different program, no rates.
    assert again is not None and again.events_per_sec is None
    two = c.get(2)
    assert two is not None and two.events_per_sec == pytest.approx(10.0)


def test_counters_going_backwards_start_a_fresh_series() -> None:
    a = snap(None, [prog(1, 100, 10_000)], t=0.0)
    b = snap(a, [replace(prog(1, 5, 500), load_time=999.0)], t=1.0)
    s = b.get(1)
    assert s is not None
    assert s.events_per_sec is None and s.cpu_percent is None


def test_zero_runs_in_period() -> None:
    a = snap(None, [prog(1, 100, 10_000)], t=0.0)
    b = snap(a, [prog(1, 100, 10_000)], t=1.0)
    s = b.get(1)
    assert s is not None
    assert s.events_per_sec == 0.0 and s.cpu_percent == 0.0
    assert s.period_avg_runtime_ns is None


def test_snapshots_are_immutable_and_compare_by_value() -> None:
    a = snap(None, [prog(1)], t=0.0)
    with pytest.raises(FrozenInstanceError):
        a.seq = 3  # type: ignore[misc]
    assert a == snap(None, [prog(1)], t=0.0)
    assert a.programs[0].program == prog(1)


def test_empty_pass() -> None:
    a = snap(None, [], t=0.0)
    b = snap(a, [], t=0.5)
    assert b.programs == () and b.seq == 2 and b.elapsed == 0.5
