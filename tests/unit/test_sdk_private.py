"""The private OpenTelemetry SDK structures otel_bpf reads are where sdk_private.py looks.

Each check fails with the installed SDK's version in its message: a new SDK release that
moves one of them turns off stats release at shutdown, the export interval guess or the
release of unloaded programs' series, so it must be seen here, not in production.
"""

from __future__ import annotations

import threading
from importlib.metadata import version

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from otel_bpf.otel import sdk_private

SDK = version("opentelemetry-sdk")


def test_the_installed_sdk_is_in_the_tested_range() -> None:
    lowest, below = sdk_private.TESTED_SDK_RANGE
    release = tuple(int(part) for part in SDK.split(".")[:2])
    assert lowest <= release < below, (
        f"opentelemetry-sdk {SDK} is outside the tested range {sdk_private.TESTED_SDK}: "
        "run this module's tests and widen TESTED_SDK and pyproject.toml when they pass"
    )


def test_shutdown_and_export_interval_are_read_from_the_sdk() -> None:
    periodic = PeriodicExportingMetricReader(ConsoleMetricExporter(), export_interval_millis=7000)
    provider = MeterProvider(metric_readers=[periodic], shutdown_on_exit=False)
    assert sdk_private.reader_export_interval(provider) == 7.0, (
        f"opentelemetry-sdk {SDK}: PeriodicExportingMetricReader._export_interval_millis moved"
    )
    assert not sdk_private.provider_is_shut_down(provider)
    provider.shutdown()
    assert sdk_private.provider_is_shut_down(provider), (
        f"opentelemetry-sdk {SDK}: MeterProvider._shutdown moved"
    )


class _HeldExporter(MetricExporter):
    """An exporter whose export waits until released, as one to a hung collector does."""

    def __init__(self) -> None:
        super().__init__()
        self.inside = threading.Event()
        self.release = threading.Event()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object
    ) -> MetricExportResult:
        self.inside.set()
        self.release.wait(10)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self.release.set()


def test_a_reader_inside_an_export_is_seen_as_exporting() -> None:
    exporter = _HeldExporter()
    periodic = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(metric_readers=[periodic], shutdown_on_exit=False)
    provider.get_meter("t").create_counter("c").add(1)
    assert not sdk_private.reader_exporting(provider)
    flush = threading.Thread(target=provider.force_flush)
    flush.start()
    try:
        assert exporter.inside.wait(10)
        assert sdk_private.reader_exporting(provider), (
            f"opentelemetry-sdk {SDK}: PeriodicExportingMetricReader._export_lock moved"
        )
    finally:
        exporter.release.set()
        flush.join(10)
    assert not sdk_private.reader_exporting(provider)
    provider.shutdown()


def test_per_attribute_state_is_found_where_it_is_released() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)

    def observe(options: CallbackOptions) -> list[Observation]:
        return [Observation(1, {"bpf.program.id": 1}), Observation(2, {"bpf.program.id": 2})]

    counter = provider.get_meter("t").create_observable_counter("c", [observe])
    reader.collect()
    assert sdk_private.has_measurement_consumer(provider), (
        f"opentelemetry-sdk {SDK}: MeterProvider._measurement_consumer moved"
    )
    matches = sdk_private.view_instrument_matches(provider, sdk_private.sdk_instrument(counter))
    assert matches, (
        f"opentelemetry-sdk {SDK}: _reader_storages/_instrument_view_instrument_matches moved"
    )
    table, lock, view_keys = sdk_private.match_aggregations(matches[0])
    seen = {
        tuple(sorted((sdk_private.aggregation_attributes(a) or {}).items())) for a in table.values()
    }
    assert seen == {(("bpf.program.id", 1),), (("bpf.program.id", 2),)}, (
        f"opentelemetry-sdk {SDK}: aggregations no longer keep _attributes"
    )
    assert view_keys is None and lock is not None
    provider.shutdown()


def test_the_grpc_exporter_internals_the_export_deadline_relies_on_are_there() -> None:
    """otel_bpf.cli.otlp_grpc subclasses the OTLP/gRPC exporter and sets its private per-request
    timeout before each batch; the other place, besides sdk_private, that relies on a private
    layout (of opentelemetry-exporter-otlp-proto-grpc)."""
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    exporter_version = version("opentelemetry-exporter-otlp-proto-grpc")
    exporter = OTLPMetricExporter(endpoint="http://127.0.0.1:9", insecure=True, timeout=3)
    try:
        assert getattr(exporter, "_timeout", None) == 3, (
            f"opentelemetry-exporter-otlp-proto-grpc {exporter_version}: _timeout moved"
        )
        assert hasattr(exporter, "_max_export_batch_size"), (
            f"opentelemetry-exporter-otlp-proto-grpc {exporter_version}: "
            "_max_export_batch_size moved"
        )
        for method in ("_export", "_split_metrics_data", "_translate_data"):
            assert callable(getattr(exporter, method, None)), (
                f"opentelemetry-exporter-otlp-proto-grpc {exporter_version}: {method}() moved"
            )
    finally:
        exporter.shutdown()


def test_the_http_exporter_internals_the_encoder_relies_on_are_there() -> None:
    """otel_bpf.cli.otlp_http's exporter replaces the OTLP/HTTP exporter's ``export`` around
    our encoder and calls its private ``_export_batch``."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    exporter_version = version("opentelemetry-exporter-otlp-proto-http")
    exporter = OTLPMetricExporter(endpoint="http://127.0.0.1:9/v1/metrics", timeout=3)
    try:
        for name in ("_shutdown", "_max_export_batch_size"):
            assert hasattr(exporter, name), (
                f"opentelemetry-exporter-otlp-proto-http {exporter_version}: {name} moved"
            )
        assert callable(getattr(exporter, "_export_batch", None)), (
            f"opentelemetry-exporter-otlp-proto-http {exporter_version}: _export_batch() moved"
        )
    finally:
        exporter.shutdown()


def test_a_hook_runs_once_after_the_provider_shuts_down() -> None:
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    calls: list[bool] = []

    def hook() -> None:
        calls.append(sdk_private.provider_is_shut_down(provider))

    assert sdk_private.call_after_shutdown(provider, hook), (
        f"opentelemetry-sdk {SDK}: MeterProvider.shutdown or _shutdown moved"
    )
    assert sdk_private.call_after_shutdown(provider, hook)  # added once
    assert calls == []
    provider.shutdown()
    assert calls == [True]
    assert not sdk_private.call_after_shutdown(object(), hook)


def test_the_cardinality_limit_is_found_and_raised_where_the_sdk_checks_it() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    counter = provider.get_meter("t").create_counter("c")
    instrument = sdk_private.sdk_instrument(counter)
    assert sdk_private.view_instrument_matches(provider, instrument) == []
    matches = sdk_private.view_instrument_matches(provider, instrument, create=True)
    assert matches is not None and len(matches) == 1, (
        f"opentelemetry-sdk {SDK}: MetricReaderStorage._get_or_init_view_instrument_match moved"
    )
    limit, explicit = sdk_private.match_cardinality_limit(matches[0])
    assert (limit, explicit) == (2000, False), (
        f"opentelemetry-sdk {SDK}: _ViewInstrumentMatch._cardinality_limit moved"
    )
    sdk_private.set_match_cardinality_limit(matches[0], 3000)
    for n in range(2500):
        counter.add(1, {"n": n})
    points = [
        p
        for rm in reader.get_metrics_data().resource_metrics  # type: ignore[union-attr]
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
    ]
    assert len(points) == 2500, f"opentelemetry-sdk {SDK}: the raised limit was not applied"
    assert not any("otel.metric.overflow" in p.attributes for p in points)
    provider.shutdown()
