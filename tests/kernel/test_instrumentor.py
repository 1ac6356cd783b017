"""BpfProgramsInstrumentor: the ``opentelemetry_instrumentor`` entry point, for real."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from kernel_progs import load_named
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from otel_bpf.kernel.syscall import close
from otel_bpf.otel import names
from otel_bpf.otel.instrumentor import BpfProgramsInstrumentor

pytestmark = pytest.mark.kernel


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


LOAD_ONE = (
    "from otel_bpf.kernel import asm\n"
    "from otel_bpf.kernel._uapi import ProgType\n"
    "from otel_bpf.kernel.loader import load_program\n"
    "def load_one(name):\n"
    "    insns = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])\n"
    "    return load_program(ProgType.SOCKET_FILTER, insns, name)\n"
)


@pytest.fixture
def instrumentor() -> Iterator[BpfProgramsInstrumentor]:
    # BaseInstrumentor is a singleton: start each test from a fresh one.  A program of our
    # own makes sure the host has at least one to export.
    scope: dict[str, Any] = {}
    exec(LOAD_ONE, scope)
    fd = scope["load_one"](f"oti{os.getpid() % 100000}")
    BpfProgramsInstrumentor._instance = None
    inst = BpfProgramsInstrumentor()
    try:
        yield inst
    finally:
        inst.uninstrument()
        BpfProgramsInstrumentor._instance = None
        close(fd)


def names_in(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    out: dict[str, Any] = {}
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = m
    return out


def test_entry_point_loads_the_instrumentor() -> None:
    (ep,) = [
        e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "bpf_programs"
    ]
    cls = ep.load()
    assert cls is BpfProgramsInstrumentor
    BpfProgramsInstrumentor._instance = None
    assert tuple(cls().instrumentation_dependencies()) == ()
    BpfProgramsInstrumentor._instance = None


def test_instrument_then_uninstrument(instrumentor: BpfProgramsInstrumentor) -> None:
    assert stats_fds() == 0, "another holder of BPF stats in this test process"
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    instrumentor.instrument(meter_provider=mp, min_interval=0.0)
    assert instrumentor.is_instrumented_by_opentelemetry
    assert stats_fds() == 1
    first = names_in(reader)
    second = names_in(reader)
    for metric in names.ALWAYS:
        # Recursion misses only for the types that can miss: the host need have none.
        if metric is not names.RECURSION_MISSES:
            assert metric.name in first, metric.name
    # The period gauges are opt-in.
    assert names.RUN_RATE.name not in second
    (enabled,) = second[names.STATS_ENABLED.name].data.data_points
    assert enabled.value == 1

    instrumentor.uninstrument()
    assert stats_fds() == 0
    assert names_in(reader) == {}

    # Again on the same provider: the instruments are reused and observe again.
    instrumentor.instrument(meter_provider=mp)
    assert stats_fds() == 1
    assert names.RUNS.name in names_in(reader)
    instrumentor.uninstrument()
    assert stats_fds() == 0
    mp.shutdown()


class KeepExporter(MetricExporter):
    def __init__(self) -> None:
        super().__init__()
        self.exported: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        self.exported.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def test_provider_shutdown_releases_stats(instrumentor: BpfProgramsInstrumentor) -> None:
    exporter = KeepExporter()
    # A long interval: the only collection is the reader's last one, during shutdown.
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=600_000)
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    instrumentor.instrument(meter_provider=mp)
    assert stats_fds() == 1
    mp.shutdown()
    assert len(exporter.exported) == 1
    assert stats_fds() == 0


def test_shutdown_releases_stats_with_a_reader_that_does_not_collect_at_shutdown(
    instrumentor: BpfProgramsInstrumentor,
) -> None:
    # An InMemoryMetricReader, like the Prometheus reader, collects only when asked: the
    # provider's shutdown runs no collection, so no callback can see it.
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    instrumentor.instrument(meter_provider=mp)
    assert stats_fds() == 1
    assert names.RUNS.name in names_in(reader)
    mp.shutdown()
    assert stats_fds() == 0


def test_instrument_on_a_shut_down_provider_takes_nothing(
    instrumentor: BpfProgramsInstrumentor, caplog: pytest.LogCaptureFixture
) -> None:
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    mp.shutdown()
    with caplog.at_level(logging.WARNING, logger="otel_bpf"):
        instrumentor.instrument(meter_provider=mp)
    assert stats_fds() == 0
    assert instrumentor.sampling_path is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "shut down" in warnings[0], warnings


PROBE = textwrap.dedent(
    """
    import json, logging, sys
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append((record.levelname, record.getMessage()))
    logging.getLogger().addHandler(Keep())
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from importlib.metadata import entry_points
    caps = open("/proc/self/status").read().split("CapEff:")[1].split()[0]
    try:
        fd = load_one("otiprobe")
    except OSError:
        fd = None  # no privileges: expected in the dropped-capabilities run
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    (ep,) = [e for e in entry_points(group="opentelemetry_instrumentor")
             if e.name == "bpf_programs"]
    inst = ep.load()()
    inst.instrument(meter_provider=mp)
    data = reader.get_metrics_data()
    metrics = [m.name for rm in (data.resource_metrics if data else ())
               for sm in rm.scope_metrics for m in sm.metrics]
    inst.uninstrument()
    warnings = [m for level, m in records if level == "WARNING"]
    print(json.dumps({"caps": caps, "metrics": metrics, "warnings": warnings}))
    """
)


def run_probe(*prefix: str) -> dict[str, Any]:
    out = subprocess.run(
        [*prefix, sys.executable, "-c", LOAD_ONE + PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_without_privileges_it_warns_once_and_does_nothing() -> None:
    dropped = run_probe(
        "setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"
    )
    assert int(dropped["caps"], 16) == 0
    assert dropped["metrics"] == []
    assert len(dropped["warnings"]) == 1, dropped["warnings"]
    assert "BPF program metrics are not available" in dropped["warnings"][0]

    # The same probe with privileges exports, so the one above failed for the right reason.
    privileged = run_probe()
    assert names.RUNS.name in privileged["metrics"]
    assert privileged["warnings"] == []


APP = "import time; time.sleep(2.5); print('the application ran')"


def run_instrumented(*prefix: str) -> subprocess.CompletedProcess[str]:
    """``opentelemetry-instrument python -c APP`` with the console exporter every second."""
    launcher = Path(sys.executable).with_name("opentelemetry-instrument")
    env = dict(
        os.environ,
        OTEL_METRICS_EXPORTER="console",
        OTEL_TRACES_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_METRIC_EXPORT_INTERVAL="1000",
    )
    return subprocess.run(
        [*prefix, str(launcher), sys.executable, "-c", APP],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    )


def test_opentelemetry_instrument_picks_it_up() -> None:
    # A program of our own, so the host is never without one while the app runs (a fresh
    # CI machine has none, and per-program series would then be absent).
    fd = load_named("otel_t_instr")
    try:
        out = run_instrumented()
    finally:
        close(fd)
    assert "the application ran" in out.stdout
    exported = set(re.findall(r'"name": "(bpf\.[a-z.]+)"', out.stdout))
    assert {names.RUNS.name, names.RUN_TIME.name, names.STATS_ENABLED.name} <= exported, (
        out.stdout[-2000:],
        out.stderr[-2000:],
    )


def test_opentelemetry_instrument_without_privileges_runs_the_app() -> None:
    out = run_instrumented(
        "setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"
    )
    assert "the application ran" in out.stdout
    assert not re.findall(r'"name": "bpf\.', out.stdout)
    assert out.stderr.count("BPF program metrics are not available") == 1, out.stderr
    assert "Traceback" not in out.stderr
