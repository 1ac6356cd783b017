"""Per-CPU counters from the iterator path, checked against a sender pinned to one CPU.

A socket filter on a loopback UDP socket runs in the softirq that delivers the datagram, on
the CPU that sent it (loopback queues to the sending CPU's backlog; no RPS here), so a sender
pinned to one CPU puts every run of the filter on that CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from kernel_progs import bpftool_json, counting_filter, send_on, two_online_cpus
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_bpf import BpfMetricsPlugin, MetricsOptions
from otel_bpf.kernel.errors import BpfUnsupportedError
from otel_bpf.kernel.iterator.source import IteratorSource
from otel_bpf.kernel.loader import program_info
from otel_bpf.kernel.open_source import open_source
from otel_bpf.kernel.programs import SyscallSource
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.kernel.stats import stats_enabled
from otel_bpf.kernel.system import possible_cpus
from otel_bpf.otel import names
from otel_bpf.otel.instrumentor import BpfProgramsInstrumentor
from otel_bpf.records import ProgramRecord

pytestmark = pytest.mark.kernel

PER_CPU = SourceOptions(per_cpu=True, memlock=False)


@pytest.fixture(autouse=True)
def _stats_on() -> Iterator[None]:
    with stats_enabled():
        yield


@pytest.fixture
def two_cpus() -> tuple[int, int]:
    return two_online_cpus()


def record_of(source: IteratorSource, prog_id: int, options: SourceOptions) -> ProgramRecord:
    (record,) = [r for r in source.read(options).records if r.id == prog_id]
    return record


def by_cpu(record: ProgramRecord) -> dict[int, tuple[int, int, int]]:
    assert record.per_cpu is not None
    return {c.cpu: (c.run_cnt, c.run_time_ns, c.recursion_misses) for c in record.per_cpu}


def assert_sums(record: ProgramRecord) -> None:
    assert record.per_cpu is not None
    assert sum(c.run_cnt for c in record.per_cpu) == record.run_cnt
    assert sum(c.run_time_ns for c in record.per_cpu) == record.run_time_ns
    assert sum(c.recursion_misses for c in record.per_cpu) == (record.recursion_misses or 0)


def test_runs_land_on_the_sender_cpu_and_follow_it(two_cpus: tuple[int, int]) -> None:
    a, b = two_cpus
    with counting_filter("otel_t_percpu") as f, IteratorSource(PER_CPU) as source:
        send_on(f, a, 300)
        first = record_of(source, f.prog_id, PER_CPU)
        assert [c.cpu for c in first.per_cpu or ()] == possible_cpus()
        assert first.run_cnt == 300 and first.run_time_ns > 0
        split = by_cpu(first)
        assert split[a][0] == 300 and split[a][1] == first.run_time_ns
        assert all(split[cpu] == (0, 0, 0) for cpu in split if cpu != a)
        assert_sums(first)
        # The totals are the syscall path's and bpftool's, to the nanosecond.
        info = program_info(f.prog_fd)
        assert (info.run_cnt, info.run_time_ns) == (first.run_cnt, first.run_time_ns)
        shown = bpftool_json("prog", "show", "id", str(f.prog_id))
        assert isinstance(shown, dict)
        assert (shown["run_cnt"], shown["run_time_ns"]) == (first.run_cnt, first.run_time_ns)

        # The sender moves: the very next pass shows the new runs on the other CPU only.
        send_on(f, b, 200)
        second = record_of(source, f.prog_id, PER_CPU)
        split = by_cpu(second)
        assert split[a] == by_cpu(first)[a]
        assert split[b][0] == 200 and split[b][1] > 0
        assert second.run_cnt == 500
        assert_sums(second)
        assert (program_info(f.prog_fd).run_cnt, program_info(f.prog_fd).run_time_ns) == (
            second.run_cnt,
            second.run_time_ns,
        )

        # Per-CPU off again: the default pass, no per-CPU tuple; on again: the same split.
        plain = record_of(source, f.prog_id, SourceOptions(memlock=False))
        assert plain.per_cpu is None and plain.run_cnt == 500
        assert by_cpu(record_of(source, f.prog_id, PER_CPU)) == split


def test_per_cpu_sums_equal_the_syscall_totals_for_every_program() -> None:
    """Every program the walk sees: its per-CPU values sum to the syscall path's totals
    (programs whose counters moved while the passes ran are not comparable and skipped)."""
    syscall = SyscallSource(SourceOptions(memlock=False))
    with counting_filter("otel_t_percpu") as f, IteratorSource(PER_CPU) as source:
        f.send(50)
        for _ in range(3):
            before = {r.id: r for r in syscall.read().records}
            walked = source.read(PER_CPU).records
            after = {r.id: r for r in syscall.read().records}
            steady = [
                r
                for r in walked
                if r.id in before
                and r.id in after
                and (before[r.id].run_cnt, before[r.id].run_time_ns)
                == (after[r.id].run_cnt, after[r.id].run_time_ns)
            ]
            if any(r.id == f.prog_id for r in steady):
                break
        assert any(r.id == f.prog_id for r in steady)
        for record in walked:
            assert_sums(record)
        for record in steady:
            want = before[record.id]
            assert (record.run_cnt, record.run_time_ns) == (want.run_cnt, want.run_time_ns)


def test_default_pass_has_no_per_cpu_block() -> None:
    with counting_filter("otel_t_percpu") as f, IteratorSource() as source:
        f.send(10)
        record = record_of(source, f.prog_id, SourceOptions(memlock=False))
        assert record.per_cpu is None and record.run_cnt == 10
        assert source.self_ids == frozenset({source._progs.prog_id})  # no per-CPU program


def test_the_syscall_path_refuses_per_cpu_naming_the_iterator() -> None:
    with pytest.raises(BpfUnsupportedError, match="iterator sampling path"):
        SyscallSource(PER_CPU)
    with pytest.raises(BpfUnsupportedError, match="iterator sampling path"):
        SyscallSource().read(PER_CPU)
    with pytest.raises(BpfUnsupportedError, match="iterator sampling path"):
        open_source("syscall", PER_CPU)


def _bpftop_otel() -> str:
    return str(Path(sys.executable).with_name("bpftop-otel"))


def test_json_per_cpu_follows_the_sender(two_cpus: tuple[int, int]) -> None:
    a, b = two_cpus
    with counting_filter("otel_t_percpu") as f:
        send_on(f, a, 120)
        ours: list[dict[str, Any]] = []
        with subprocess.Popen(
            [_bpftop_otel(), "--json", "--per-cpu", "--count", "6", "--interval", "0.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as proc:
            try:
                assert proc.stdout is not None and proc.stderr is not None
                deadline = time.monotonic() + 30
                for line in proc.stdout:
                    obj = json.loads(line)
                    if obj["id"] != f.prog_id:
                        continue
                    ours.append(obj)
                    if len(ours) == 2:  # a period without runs has passed: move the sender
                        send_on(f, b, 80)
                    assert time.monotonic() < deadline
                assert proc.wait(timeout=30) == 0, proc.stderr.read()
            finally:
                if proc.poll() is None:
                    proc.kill()
    assert len(ours) == 6
    for obj in ours:
        per_cpu = obj["per_cpu"]
        assert isinstance(per_cpu, list)
        assert [c["cpu"] for c in per_cpu] == possible_cpus()
        assert sum(c["run_cnt"] for c in per_cpu) == obj["run_cnt"]
        assert sum(c["run_time_ns"] for c in per_cpu) == obj["run_time_ns"]
    splits = [{c["cpu"]: c for c in obj["per_cpu"]} for obj in ours]
    first = splits[0]
    assert first[a]["run_cnt"] == 120 and first[b]["run_cnt"] == 0
    assert first[a]["events_per_sec"] is None  # a first sample has no rates
    assert splits[-1][a]["run_cnt"] == 120 and splits[-1][b]["run_cnt"] == 80
    # The first pass that saw the moved runs: all of them on b, none on a.
    split = next(s for s in splits if s[b]["run_cnt"] == 80)
    assert split[b]["events_per_sec"] > 0 and split[b]["cpu_utilization"] > 0
    assert split[a]["events_per_sec"] == 0 and split[a]["cpu_utilization"] == 0


def test_json_per_cpu_with_the_syscall_path_is_a_usage_error() -> None:
    proc = subprocess.run(
        [_bpftop_otel(), "--json", "--per-cpu", "--sampling-path", "syscall", "--count", "1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert "--per-cpu" in line and "iterator" in line


# -- the OpenTelemetry per-CPU counters (MetricsOptions(per_cpu=True)) --------------------


def per_cpu_points(reader: InMemoryMetricReader, prog_id: int) -> dict[str, dict[Any, float]]:
    """One collection: metric name -> {cpu.logical_number (None for a total): value} of
    ``prog_id``'s series."""
    data = reader.get_metrics_data()
    out: dict[str, dict[Any, float]] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for p in m.data.data_points:
                    if p.attributes.get(names.PROGRAM_ID) == prog_id:
                        cpu = p.attributes.get(names.CPU_LOGICAL_NUMBER)
                        out.setdefault(m.name, {})[cpu] = p.value
    return out


def collect_until_runs(
    reader: InMemoryMetricReader, prog_id: int, runs: int
) -> dict[str, dict[Any, float]]:
    """Collect until the program's total runs reach ``runs`` (a collection sooner than the
    plugin's interval after the last pass exports that pass again)."""
    deadline = time.monotonic() + 5
    while True:
        got = per_cpu_points(reader, prog_id)
        if got.get(names.RUNS.name, {}).get(None) == runs or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


@pytest.mark.anyio
async def test_plugin_per_cpu_counters_follow_the_sender(two_cpus: tuple[int, int]) -> None:
    a, b = two_cpus
    reader, plain_reader = InMemoryMetricReader(), InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    plain_mp = MeterProvider(metric_readers=[plain_reader], shutdown_on_exit=False)
    with counting_filter("otel_t_percpu") as f:
        only_ours = MetricsOptions(names=("otel_t_percpu",))
        plugin = BpfMetricsPlugin(mp, interval=0.1, options=replace(only_ours, per_cpu=True))
        try:
            with anyio.fail_after(30):
                async with plugin, BpfMetricsPlugin(plain_mp, interval=0.1, options=only_ours):
                    # Headless counters: each collection takes the pass, per-CPU ones too.
                    assert plugin.samples_on_collection
                    assert plugin.sampling_path == "iterator"
                    send_on(f, a, 300)
                    got = collect_until_runs(reader, f.prog_id, 300)
                    cpus = possible_cpus()
                    for metric in (names.CPU_RUNS.name, names.CPU_RUN_TIME.name):
                        assert sorted(got[metric]) == cpus, metric
                    assert got[names.CPU_RUNS.name][a] == 300
                    assert all(got[names.CPU_RUNS.name][c] == 0 for c in cpus if c != a)
                    assert got[names.CPU_RUN_TIME.name][a] == got[names.RUN_TIME.name][None] > 0
                    # A socket filter cannot miss a run: no per-CPU misses, as no total.
                    assert names.CPU_RECURSION_MISSES.name not in got

                    # The sender moves: the next pass has the new runs on the other CPU.
                    send_on(f, b, 200)
                    got = collect_until_runs(reader, f.prog_id, 500)
                    assert got[names.CPU_RUNS.name][a] == 300
                    assert got[names.CPU_RUNS.name][b] == 200
                    assert sum(got[names.CPU_RUNS.name].values()) == got[names.RUNS.name][None]
                    assert sum(got[names.CPU_RUN_TIME.name].values()) == pytest.approx(
                        got[names.RUN_TIME.name][None], rel=1e-9
                    )

                    # Without the option: the same program, no per-CPU series at all.
                    plain = collect_until_runs(plain_reader, f.prog_id, 500)
                    assert set(plain) == {names.RUN_TIME.name, names.RUNS.name}
                    assert set(plain[names.RUNS.name]) == {None}
        finally:
            mp.shutdown()
            plain_mp.shutdown()


def test_instrumentor_per_cpu_counters(two_cpus: tuple[int, int]) -> None:
    a, _ = two_cpus
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    # BaseInstrumentor is a singleton: a fresh one for this test.
    BpfProgramsInstrumentor._instance = None
    instrumentor = BpfProgramsInstrumentor()
    with counting_filter("otel_t_percpu") as f:
        try:
            options = MetricsOptions(names=("otel_t_percpu",), per_cpu=True)
            instrumentor.instrument(meter_provider=mp, options=options, min_interval=0.0)
            assert instrumentor.sampling_path == "iterator"
            send_on(f, a, 120)
            got = collect_until_runs(reader, f.prog_id, 120)
            assert got[names.CPU_RUNS.name][a] == 120
            assert sum(got[names.CPU_RUNS.name].values()) == 120
        finally:
            instrumentor.uninstrument()
            BpfProgramsInstrumentor._instance = None
            mp.shutdown()
