"""10,000 distinct programs loaded and unloaded over one exporter's life.

The SDK (1.45.2) keeps every attribute set an observable instrument has seen and folds sets
beyond 2000 into ``otel.metric.overflow``; the instruments release the sets of unloaded
programs, so the programs loaded now keep their own attributes and memory stays flat.
"""

from __future__ import annotations

import gc
import os
import resource
import sys
import time
from typing import Any

import pytest
from kernel_progs import many_loaded, prog_id_of_fd
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_bpf import read_programs
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.loader import load_program, program_id
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.kernel.syscall import close
from otel_bpf.kernel.system import possible_cpus
from otel_bpf.otel import names
from otel_bpf.otel.instruments import BpfInstruments, create_instruments
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.sampler import Sampler

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

BATCHES = 50
PER_BATCH = 200
HISTORY = 60
WARM_UP = 30
"""Batches before the first memory reading: two passes per batch fill the sampler's history
(bounded, 60 snapshots) by then, and caches, interned strings and the SDK's first
aggregations are in place.  The 20 batches after it (4,000 more programs) must not grow."""


def sdk_series(provider: MeterProvider, inst: BpfInstruments) -> int:
    """Attribute sets the SDK holds for our instruments, over all readers (private layout)."""
    total = 0
    storages = provider._measurement_consumer._reader_storages.values()  # type: ignore[attr-defined]
    ours = set(inst._instruments.values())
    for storage in storages:
        for instrument, matches in storage._instrument_view_instrument_matches.items():
            if instrument in ours:
                total += sum(len(m._attributes_aggregation) for m in matches)
    return total


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    out: dict[str, Any] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = m
    return out


def test_10000_programs_never_overflow_and_memory_stays_flat() -> None:
    insns = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])
    prefix = f"oc{os.getpid() % 1000}_"
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    sampler = Sampler(history=HISTORY)
    inst = create_instruments(mp, lambda: sampler.history)
    # Programs other than ours (the host's own) also get series; the bound below is
    # relative to how many there are, not to a guess about the machine.
    host_programs = len(read_programs(SourceOptions(memlock=False)))
    started = time.monotonic()
    base_blocks = base_rss = 0
    max_series = 0
    try:
        for batch in range(BATCHES):
            fds: list[int] = []
            expected: dict[int, str] = {}
            try:
                for i in range(PER_BATCH):
                    name = f"{prefix}{batch}_{i}"
                    fd = load_program(ProgType.SOCKET_FILTER, insns, name)
                    fds.append(fd)
                    expected[program_id(fd)] = name
                sampler.sample_once()
                got = collect(reader)
            finally:
                for fd in fds:
                    close(fd)
            exported = {
                p.attributes[names.PROGRAM_ID]: dict(p.attributes)
                for p in got[names.RUNS.name].data.data_points
            }
            for prog_id, name in expected.items():
                assert exported.get(prog_id) == {
                    names.PROGRAM_ID: prog_id,
                    names.PROGRAM_NAME: name,
                    names.PROGRAM_TYPE: "socket_filter",
                }, (batch, prog_id)
            for metric in got.values():
                for point in metric.data.data_points:
                    assert "otel.metric.overflow" not in point.attributes, (batch, metric.name)
            max_series = max(max_series, sdk_series(mp, inst))
            # The programs are gone: one more pass and collection, as time goes by.
            sampler.sample_once()
            after = collect(reader)
            if names.RUNS.name in after:
                left = {
                    p.attributes[names.PROGRAM_ID] for p in after[names.RUNS.name].data.data_points
                }
                # Freeing a program is deferred (RCU), so a few may still be listed.
                assert len(left & set(expected)) < PER_BATCH // 2
            if batch == WARM_UP - 1:
                gc.collect()
                base_blocks = sys.getallocatedblocks()
                base_rss = rss_bytes()
        gc.collect()
        end_blocks = sys.getallocatedblocks()
        end_rss = rss_bytes()
    finally:
        mp.shutdown()
    elapsed = time.monotonic() - started
    host_programs = max(host_programs, len(read_programs(SourceOptions(memlock=False))))
    pruner = inst.pruner
    assert pruner is not None and pruner.active
    figures = (
        f"{BATCHES * PER_BATCH} programs in {elapsed:.1f} s; SDK series held at most "
        f"{max_series} (8 instruments, {host_programs} other programs); released "
        f"{pruner.released}; over the last "
        f"{(BATCHES - WARM_UP) * PER_BATCH} programs: Python objects {base_blocks} -> "
        f"{end_blocks}, RSS {base_rss / 2**20:.1f} -> {end_rss / 2**20:.1f} MiB"
    )
    print(figures)
    # Live programs (ours plus the host's) times the per-program instruments, never the
    # 5,000 seen: without releasing, this would reach 2000 per instrument and overflow.
    assert max_series < 8 * (PER_BATCH + host_programs + 100), figures
    # Each unloaded socket filter had two per-program series by default (runs and run
    # time: no recursion misses for its type, no period gauges unless asked).
    assert pruner.released >= 2 * (BATCHES - 1) * PER_BATCH, figures
    # Flat: a leak of one small object per program and instrument would add 32,000 blocks.
    assert end_blocks - base_blocks < 5_000, figures
    assert end_rss - base_rss < 2 * 2**20, figures


AT_ONCE = 5000


def test_5000_programs_loaded_at_once_each_keep_their_own_series(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More programs loaded at the same time than the SDK's default limit (2000): the limit
    of our instruments is raised ahead of them, so none is folded into overflow."""
    insns = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])
    prefix = f"oa{os.getpid() % 1000}_"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < AT_ONCE + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, AT_ONCE + 256), hard))
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    sampler = Sampler(history=2)
    # The period gauges too, so every per-program instrument is checked for overflow.
    create_instruments(mp, lambda: sampler.history, MetricsOptions(derived_gauges=True))
    fds: list[int] = []
    expected: dict[int, str] = {}
    try:
        for i in range(AT_ONCE):
            fd = load_program(ProgType.SOCKET_FILTER, insns, f"{prefix}{i}")
            fds.append(fd)
            expected[program_id(fd)] = f"{prefix}{i}"
        with caplog.at_level("INFO", logger="otel_bpf"):
            for _ in range(2):  # the second pass has rates: every instrument reports
                sampler.sample_once()
                got = collect(reader)
    finally:
        for fd in fds:
            close(fd)
        mp.shutdown()
    for metric in got.values():
        for point in metric.data.data_points:
            assert "otel.metric.overflow" not in point.attributes, metric.name
    for metric in (names.RUNS, names.RUN_TIME, names.RUN_RATE):
        exported = {
            p.attributes[names.PROGRAM_ID]: p.attributes[names.PROGRAM_NAME]
            for p in got[metric.name].data.data_points
        }
        missing = {i for i in expected if exported.get(i) != expected[i]}
        assert not missing, f"{metric.name}: {len(missing)} of {AT_ONCE} programs missing"
    raised = [r.getMessage() for r in caplog.records if "cardinality limit" in r.getMessage()]
    assert raised and "raised to" in raised[0], raised


PER_CPU_PROGRAMS = 1200


def test_1200_programs_per_cpu_each_keep_their_own_series() -> None:
    """Per-CPU counters: programs x possible CPUs series per instrument (2,400 and more at
    1,200 programs on two CPUs, above the SDK's default limit of 2000), none folded into
    overflow."""
    prefix = f"oq{os.getpid() % 1000}_"
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    options = MetricsOptions(per_cpu=True)
    sampler = Sampler(history=2, options=options.source_options)
    create_instruments(mp, lambda: sampler.history, options)
    try:
        with many_loaded(PER_CPU_PROGRAMS, prefix) as fds:
            ids = {prog_id_of_fd(fd) for fd in fds}
            sampler.sample_once()
            got = collect(reader)
    finally:
        sampler.close()
        mp.shutdown()
    cpus = possible_cpus()
    for metric in got.values():
        for point in metric.data.data_points:
            assert "otel.metric.overflow" not in point.attributes, metric.name
    for metric in (names.CPU_RUNS, names.CPU_RUN_TIME):
        ours = {
            (p.attributes[names.PROGRAM_ID], p.attributes[names.CPU_LOGICAL_NUMBER])
            for p in got[metric.name].data.data_points
            if p.attributes[names.PROGRAM_ID] in ids
        }
        assert ours == {(i, c) for i in ids for c in cpus}, metric.name
