"""A collector that accepts connections and never answers, on 127.0.0.1.

One export (all its batches and retries) ends within the OTLP timeout, and the plugin
keeps stats on while its reader is stuck inside such an export: a reader that is
exporting is reading.
"""

from __future__ import annotations

import time

import anyio
import pytest
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricExportResult,
    PeriodicExportingMetricReader,
)
from peers import SilentCollector

from otel_bpf import BpfMetricsPlugin, MetricsOptions
from otel_bpf.cli import args as cli_args
from otel_bpf.cli.config import resolve
from otel_bpf.cli.exporters import GRPC_EXPORT_BATCH_POINTS, build_telemetry
from otel_bpf.cli.logs import ExportLogGate

pytestmark = [pytest.mark.timeout(120)]


def many_points(count: int):  # type: ignore[no-untyped-def]
    """MetricsData with ``count`` data points (one observable counter)."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)

    def observe(_options: CallbackOptions) -> list[Observation]:
        return [Observation(i, {"n": i}) for i in range(count)]

    provider.get_meter("t").create_observable_counter("points", callbacks=[observe])
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def test_one_export_of_many_batches_ends_within_the_timeout() -> None:
    with SilentCollector(lifetime=60) as silent:
        ns = cli_args.parse_args(["--endpoint", silent.url, "--export-interval", "5"])
        config = resolve(ns, {"OTEL_EXPORTER_OTLP_TIMEOUT": "1"})
        telemetry = build_telemetry(config, ExportLogGate())
        assert telemetry.otlp is not None
        data = many_points(GRPC_EXPORT_BATCH_POINTS * 4 - 1)  # four requests
        try:
            started = time.monotonic()
            result = telemetry.otlp.export(data, timeout_millis=30_000)
            took = time.monotonic() - started
        finally:
            telemetry.abort()
        assert result is MetricExportResult.FAILURE
        assert silent.accepted >= 1
        assert took < 1.8, f"one export took {took:.1f} s with a 1 s timeout"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.kernel
@pytest.mark.anyio
async def test_stats_stay_on_while_the_reader_is_stuck_exporting() -> None:
    """Export interval 0.3 s, so idle after 0.9 s; each export is held 3 s."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    with SilentCollector(lifetime=60) as silent:
        exporter = OTLPMetricExporter(endpoint=silent.url, insecure=True, timeout=3)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=300)
        provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
        plugin = BpfMetricsPlugin(provider, interval=0.1, options=MetricsOptions(names=("x",)))
        held: list[bool] = []
        try:
            with anyio.fail_after(60):
                async with plugin:
                    started = time.monotonic()
                    while time.monotonic() - started < 7.0:
                        await anyio.sleep(0.1)
                        held.append(plugin.stats_held)
        finally:
            exporter.shutdown(timeout_millis=0)
            provider.shutdown(timeout_millis=1000)
        assert all(held), f"stats went off for {held.count(False)} of {len(held)} checks"
