"""BpfMetricsPlugin in an asyncio app and a trio app, against the real kernel.

A tiny socket filter of our own on a loopback UDP socket runs once per datagram; the plugin
exports it through a real SDK MeterProvider read by an InMemoryMetricReader.  The kernel's
stats fd (``anon_inode:bpf-stats`` in /proc/self/fd) must follow the provider's life.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import Gauge, InMemoryMetricReader, Sum

from otel_bpf import BpfMetricsPlugin, MetricsOptions
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.loader import attach_socket_filter, load_program, program_id
from otel_bpf.kernel.syscall import close
from otel_bpf.otel import names
from otel_bpf.sampler import Sampler

pytestmark = [pytest.mark.kernel, pytest.mark.anyio]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:  # closed since listed
        return ""


def stats_fds() -> int:
    """BPF_ENABLE_STATS fds this process holds."""
    return sum(
        _link(f"/proc/self/fd/{fd}") == "anon_inode:bpf-stats" for fd in os.listdir("/proc/self/fd")
    )


class Filter:
    """A socket filter that drops every datagram on a bound loopback socket (one run each)."""

    def __init__(self, name: str) -> None:
        self.name = name
        insns = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])
        self.fd = load_program(ProgType.SOCKET_FILTER, insns, name)
        self.id = program_id(self.fd)
        self.rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rx.bind(("127.0.0.1", 0))
        attach_socket_filter(self.rx, self.fd)
        self.tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, n: int) -> None:
        addr = self.rx.getsockname()
        for _ in range(n):
            self.tx.sendto(b"x", addr)

    def close(self) -> None:
        self.rx.close()
        self.tx.close()
        close(self.fd)


@contextmanager
def socket_filter() -> Iterator[Filter]:
    f = Filter(f"otp{os.getpid() % 100000}")
    try:
        yield f
    finally:
        f.close()


def metrics_by_name(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    out: dict[str, Any] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = m
    return out


def value_for(metric: Any, prog_id: int) -> float | None:
    for p in metric.data.data_points:
        if p.attributes.get(names.PROGRAM_ID) == prog_id:
            return float(p.value)
    return None


async def wait_for(predicate: Any, within: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await anyio.sleep(step)
    return bool(predicate())


async def next_pass_after_now(plugin: BpfMetricsPlugin) -> None:
    """Wait for a pass that started after this call (the current one may have begun before)."""
    snap = plugin.sampler.latest
    assert snap is not None
    await plugin.sampler.wait_next(snap.seq + 1)


def has_gauges(got: dict[str, Any], prog_id: int) -> bool:
    return all(
        m.name in got and value_for(got[m.name], prog_id) is not None
        for m in (names.RUN_TIME_AVERAGE, names.RUN_RATE, names.CPU_UTILIZATION)
    )


async def collect_until(
    plugin: BpfMetricsPlugin,
    reader: InMemoryMetricReader,
    done: Any,
    passes: int = 25,
) -> dict[str, Any]:
    """Collect after each new pass until ``done(metrics)`` or ``passes`` passes went by."""
    got: dict[str, Any] = {}
    for _ in range(passes):
        await next_pass_after_now(plugin)
        got = metrics_by_name(reader)
        try:
            if done(got):
                break
        except KeyError:  # not exported yet
            continue
    return got


async def test_exports_the_contract_for_a_real_socket_filter() -> None:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    with socket_filter() as f:
        # Figures over a period: the sampler takes a pass every interval.
        options = MetricsOptions(names=(f.name,), memory=True, code_size=True, derived_gauges=True)
        with anyio.fail_after(60):
            async with BpfMetricsPlugin(mp, interval=0.2, options=options) as plugin:
                first = metrics_by_name(reader)
                runs0 = value_for(first[names.RUNS.name], f.id)
                assert runs0 is not None
                sent = 0
                stop = anyio.Event()

                async def drive() -> None:
                    # About 1000 datagrams a second until told to stop: every period has runs.
                    nonlocal sent
                    while not stop.is_set():
                        f.send(50)
                        sent += 50
                        await anyio.sleep(0.05)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(drive)
                    mid = await collect_until(plugin, reader, lambda m: has_gauges(m, f.id))
                    stop.set()
                # Loopback delivery may be deferred to ksoftirqd on a busy machine: wait (a
                # bounded time) for the counter to settle, then it must match exactly.
                got = await collect_until(
                    plugin, reader, lambda m: value_for(m[names.RUNS.name], f.id) == runs0 + sent
                )
                f.send(300)
                again = await collect_until(
                    plugin,
                    reader,
                    lambda m: value_for(m[names.RUNS.name], f.id) == runs0 + sent + 300,
                )
        mp.shutdown()

    # A socket filter cannot miss a run (no recursion check on its path): no misses series.
    assert names.RECURSION_MISSES.name not in mid
    contract = [m for m in names.ALWAYS if m is not names.RECURSION_MISSES]
    for metric in (
        *contract,
        names.RUN_TIME_AVERAGE,
        names.RUN_RATE,
        names.CPU_UTILIZATION,
        names.MEMORY_USAGE,
        names.CODE_SIZE,
    ):
        assert metric.name in mid, metric.name
        m = mid[metric.name]
        assert m.unit == metric.unit, metric.name
        assert m.description == metric.description
        expected_kind = Gauge if metric.kind == "gauge" else Sum
        assert isinstance(m.data, expected_kind), metric.name
        if isinstance(m.data, Sum):
            assert m.data.is_monotonic is (metric.kind == "counter"), metric.name

    point = next(
        p for p in got[names.RUNS.name].data.data_points if p.attributes[names.PROGRAM_ID] == f.id
    )
    assert dict(point.attributes) == {
        names.PROGRAM_ID: f.id,
        names.PROGRAM_NAME: f.name,
        names.PROGRAM_TYPE: "socket_filter",
    }
    # Every datagram ran the filter once: with stats held, run_cnt counts them exactly.
    runs1 = value_for(got[names.RUNS.name], f.id)
    runs2 = value_for(again[names.RUNS.name], f.id)
    assert sent >= 50
    assert runs1 == runs0 + sent
    assert runs2 == runs1 + 300
    t0 = value_for(first[names.RUN_TIME.name], f.id)
    t1 = value_for(got[names.RUN_TIME.name], f.id)
    t2 = value_for(again[names.RUN_TIME.name], f.id)
    assert t0 is not None and t1 is not None and t2 is not None
    assert t0 <= t1 < t2
    avg = value_for(mid[names.RUN_TIME_AVERAGE.name], f.id)
    assert avg is not None and 0 < avg < 1e-3
    # About 1000 runs/s are driven; a busy machine may bunch them, so only the order of magnitude.
    rate = value_for(mid[names.RUN_RATE.name], f.id)
    assert rate is not None and 100 < rate < 10_000
    util = value_for(mid[names.CPU_UTILIZATION.name], f.id)
    assert util is not None and 0 < util < 0.01
    count = {
        p.attributes[names.PROGRAM_TYPE]: p.value
        for p in again[names.PROGRAM_COUNT.name].data.data_points
    }
    assert count == {"socket_filter": 1}
    (enabled,) = again[names.STATS_ENABLED.name].data.data_points
    assert enabled.value == 1 and dict(enabled.attributes) == {}
    code = value_for(again[names.CODE_SIZE.name], f.id)
    assert code is not None and code > 0
    mem = value_for(again[names.MEMORY_USAGE.name], f.id)
    assert mem is not None and mem > 0


async def test_stats_fd_follows_the_provider_shutdown_and_plugin_exit() -> None:
    assert stats_fds() == 0, "another holder of BPF stats in this test process"
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            plugin = BpfMetricsPlugin(mp, interval=0.2, options=MetricsOptions(names=("x",)))
            await tg.start(plugin.run)
            assert stats_fds() == 1 and plugin.stats_held
            metrics_by_name(reader)
            # Shutting the provider down switches stats off while the plugin keeps running.
            mp.shutdown()
            assert await wait_for(lambda: stats_fds() == 0, within=2.0)
            assert not plugin.stats_held
            await anyio.sleep(0.5)
            assert stats_fds() == 0
            tg.cancel_scope.cancel()
    assert stats_fds() == 0

    # A plugin that exits switches its stats off at once.
    reader2 = InMemoryMetricReader()
    mp2 = MeterProvider(metric_readers=[reader2], shutdown_on_exit=False)
    with anyio.fail_after(60):
        async with BpfMetricsPlugin(mp2, interval=0.2, options=MetricsOptions(names=("x",))):
            assert stats_fds() == 1
        assert stats_fds() == 0
    mp2.shutdown()


async def test_stats_pause_without_collection_and_resume_with_it() -> None:
    assert stats_fds() == 0, "another holder of BPF stats in this test process"
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    plugin = BpfMetricsPlugin(
        mp,
        interval=0.1,
        options=MetricsOptions(names=("x",)),
        collection_interval=0.3,
        idle_collections=3,
    )
    with anyio.fail_after(60):
        async with plugin:
            assert stats_fds() == 1
            # Collected regularly: stays on well past three collection intervals.
            for _ in range(8):
                await anyio.sleep(0.2)
                metrics_by_name(reader)
                stopped = time.monotonic()
                assert stats_fds() == 1
            # No collection: off after 3 x 0.3 s (plus the supervisor's polling).
            assert await wait_for(lambda: stats_fds() == 0, within=5.0)
            paused_after = time.monotonic() - stopped
            assert 0.9 <= paused_after <= 3.0, paused_after
            await anyio.sleep(0.5)
            assert stats_fds() == 0
            # Collection resumes: stats come back on.
            metrics_by_name(reader)
            assert await wait_for(lambda: stats_fds() == 1, within=2.0)
            assert plugin.stats_held
        assert stats_fds() == 0
    mp.shutdown()


def bpftool_counters(prog_id: int) -> tuple[int, int]:
    """``(run_cnt, run_time_ns)`` of a program as ``bpftool prog show -j`` reports them."""
    out = subprocess.run(
        ["bpftool", "prog", "show", "id", str(prog_id), "-j"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    info = json.loads(out.stdout)
    return int(info.get("run_cnt", 0)), int(info.get("run_time_ns", 0))


def settled(prog_id: int, runs: int, within: float = 10.0) -> tuple[int, int]:
    """bpftool's counters once the filter has run ``runs`` times (loopback delivery may be
    deferred to ksoftirqd on a busy machine)."""
    deadline = time.monotonic() + within
    while True:
        counters = bpftool_counters(prog_id)
        if counters[0] >= runs or time.monotonic() > deadline:
            return counters
        time.sleep(0.01)


async def test_counters_only_one_pass_per_collection_equal_to_bpftool() -> None:
    """Headless with counters only: no sampler loop, each collection reads the kernel once
    (at most once per interval), and exports what bpftool shows at that moment."""
    assert stats_fds() == 0, "another holder of BPF stats in this test process"
    now = [1000.0]
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    with socket_filter() as f:
        options = MetricsOptions(names=(f.name,))
        sampler = Sampler(
            interval=1.0, history=4, options=options.source_options, clock=lambda: now[0]
        )
        plugin = BpfMetricsPlugin(mp, options=options, sampler=sampler, sample_on_collection=True)
        try:
            with anyio.fail_after(60):
                async with plugin:
                    assert not sampler.running and sampler.passes == 1
                    runs = bpftool_counters(f.id)[0]
                    for n in range(1, 6):
                        f.send(100)  # 100 runs per step
                        runs += 100
                        expected = settled(f.id, runs)
                        now[0] += 1.0
                        got = metrics_by_name(reader)
                        assert sampler.passes == 1 + n
                        assert value_for(got[names.RUNS.name], f.id) == expected[0] == runs
                        assert value_for(got[names.RUN_TIME.name], f.id) == expected[1] / 1e9
                    # A storm of collections within one interval walks the kernel no more.
                    f.send(10)
                    settled(f.id, runs + 10)
                    for _ in range(300):
                        now[0] += 0.001
                        got = metrics_by_name(reader)
                        assert value_for(got[names.RUNS.name], f.id) == runs
                    assert sampler.passes == 6
                    now[0] += 1.0
                    got = metrics_by_name(reader)
                    assert sampler.passes == 7
                    assert value_for(got[names.RUNS.name], f.id) == runs + 10
                    assert bpftool_counters(f.id)[0] == runs + 10
        finally:
            sampler.close()
            mp.shutdown()
    assert stats_fds() == 0
