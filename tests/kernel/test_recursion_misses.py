"""bpf.program.recursion.misses only for the program types whose misses the kernel counts.

Two real programs, loaded and not attached: a socket filter (run by bpf_prog_run() with no
recursion guard: its counter can never move) and a raw tracepoint program (run by
__bpf_trace_run(), which counts a nested run as a miss). Both go through the real sampler
and the SDK; only the raw tracepoint program may have a misses series.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.loader import load_program, program_id
from otel_bpf.kernel.syscall import close
from otel_bpf.otel import names
from otel_bpf.otel.instruments import create_instruments
from otel_bpf.otel.options import AttributeSet, MetricsOptions
from otel_bpf.sampler import Sampler

pytestmark = pytest.mark.kernel

PREFIX = f"otel_rm{os.getpid() % 1000}_"
RETURN_0 = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])


@pytest.fixture
def programs() -> Iterator[dict[str, int]]:
    """Type name -> id of one loaded program of that type."""
    sock = load_program(ProgType.SOCKET_FILTER, RETURN_0, f"{PREFIX}sock")
    try:
        raw_tp = load_program(ProgType.RAW_TRACEPOINT, RETURN_0, f"{PREFIX}rawtp")
        try:
            yield {"socket_filter": program_id(sock), "raw_tracepoint": program_id(raw_tp)}
        finally:
            close(raw_tp)
    finally:
        close(sock)


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    return {
        m.name: m
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for m in sm.metrics
    }


def types_of(metric: Any) -> dict[str, float]:
    return {p.attributes[names.PROGRAM_TYPE]: p.value for p in metric.data.data_points}


@pytest.mark.parametrize("attributes", ["per_program", "by_name_type"])
def test_only_a_type_that_can_miss_has_a_misses_series(
    programs: dict[str, int], attributes: AttributeSet
) -> None:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    sampler = Sampler(history=2)
    try:
        options = MetricsOptions(names=(f"{PREFIX}*",), attributes=attributes)
        create_instruments(mp, lambda: sampler.history, options)
        sampler.sample_once()
        got = collect(reader)
    finally:
        sampler.close()
        mp.shutdown()
    assert set(types_of(got[names.RUNS.name])) == {"socket_filter", "raw_tracepoint"}
    # Never attached, so never run and never missed: the series is there, at 0.
    assert types_of(got[names.RECURSION_MISSES.name]) == {"raw_tracepoint": 0}
    if attributes == "per_program":
        (point,) = got[names.RECURSION_MISSES.name].data.data_points
        assert point.attributes[names.PROGRAM_ID] == programs["raw_tracepoint"]
