"""The meter provider bpftop-otel builds: exporter class per protocol, settings passed
through, resource, Prometheus endpoint on loopback, and clear errors."""

from __future__ import annotations

import builtins
import socket
import threading
import time
import urllib.request
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcExporter,
)
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpExporter,
)

from otel_bpf.cli import args as cli_args
from otel_bpf.cli.config import ConfigError, resolve
from otel_bpf.cli.exporters import ExporterError, Telemetry, build_telemetry
from otel_bpf.cli.logs import BurstReportingExporter, ExportLogGate


def telemetry(argv: list[str], env: dict[str, str] | None = None) -> Telemetry:
    return build_telemetry(resolve(cli_args.parse_args(argv), env or {}), ExportLogGate())


def inner(t: Telemetry) -> Any:
    assert isinstance(t.otlp, BurstReportingExporter)
    return t.otlp._inner


def test_no_exporter_no_provider() -> None:
    t = telemetry(["--exporter", "none"])
    assert t.provider is None and t.targets == []
    t.shutdown(1)


def test_grpc_exporter_gets_the_resolved_settings() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "3",
        "OTEL_SERVICE_NAME": "edge-1",
    }
    t = telemetry(["--endpoint", "http://127.0.0.1:1", "--export-interval", "5"], env)
    try:
        exporter = inner(t)
        assert isinstance(exporter, GrpcExporter)
        assert exporter._endpoint == "127.0.0.1:1"
        assert exporter._insecure is True
        assert dict(exporter._headers) == {"authorization": "Bearer t"}
        assert exporter._timeout == 3.0
        assert t.targets == ["http://127.0.0.1:1 (OTLP grpc)"]
        assert t.provider is not None
        resource = t.provider._sdk_config.resource.attributes
        assert resource["service.name"] == "edge-1"
        reader = t.provider._metric_readers[0]
        assert reader._export_interval_millis == 5000
    finally:
        t.shutdown(1)


@pytest.mark.parametrize("path", ["iterator", "syscall"])
def test_resource_names_the_sampling_path(path: str) -> None:
    """The path wins over a value in OTEL_RESOURCE_ATTRIBUTES; other attributes stay."""
    args = cli_args.parse_args(["--endpoint", "http://127.0.0.1:1"])
    env = {"OTEL_RESOURCE_ATTRIBUTES": "bpf.sampling.path=claimed,team=net"}
    t = build_telemetry(resolve(args, env), ExportLogGate(), sampling_path=path)
    try:
        assert t.provider is not None
        resource = t.provider._sdk_config.resource.attributes
        assert resource["bpf.sampling.path"] == path
        assert resource["team"] == "net"
    finally:
        t.shutdown(1)


def test_resource_without_a_sampling_path_has_none() -> None:
    t = telemetry(["--endpoint", "http://127.0.0.1:1"])
    try:
        assert t.provider is not None
        assert "bpf.sampling.path" not in t.provider._sdk_config.resource.attributes
    finally:
        t.shutdown(1)


def test_http_exporter_for_http_protobuf() -> None:
    t = telemetry(["--protocol", "http/protobuf", "--endpoint", "http://127.0.0.1:1"])
    try:
        exporter = inner(t)
        assert isinstance(exporter, HttpExporter)
        assert exporter._endpoint == "http://127.0.0.1:1/v1/metrics"
        assert t.provider is not None
        assert t.provider._sdk_config.resource.attributes["service.name"] == "bpftop-otel"
    finally:
        t.shutdown(1)


def test_console_and_shutdown_is_idempotent() -> None:
    t = telemetry(["--exporter", "console", "--export-interval", "3600"])
    assert t.targets == ["console"]
    t.shutdown(1)
    t.shutdown(1)


def test_prometheus_endpoint_on_loopback() -> None:
    t = telemetry(["--exporter", "prometheus", "--prometheus-port", "0"])
    try:
        (target,) = t.targets
        assert target.startswith("http://127.0.0.1:") and target.endswith("/metrics (Prometheus)")
        url = target.split(" ")[0]
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
    finally:
        t.shutdown(1)


def test_prometheus_endpoint_spends_no_thread_per_connection() -> None:
    t = telemetry(["--exporter", "prometheus", "--prometheus-port", "0"])
    idle: list[socket.socket] = []
    try:
        url = t.targets[0].split(" ")[0]
        address = t._servers[0].server_address
        before = threading.active_count()
        for i in range(50):
            idle.append(socket.create_connection(address, timeout=5))
            if i % 2:
                idle[-1].sendall(b"GET /metr")
        time.sleep(0.3)
        assert threading.active_count() == before
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200
        started = time.monotonic()
        t.shutdown(1)
        assert time.monotonic() - started < 1.0
        assert threading.active_count() < before
    finally:
        t.shutdown(1)
        for s in idle:
            s.close()


def test_prometheus_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ExporterError, match=rf"cannot listen on 127.0.0.1:{port}"):
            telemetry(["--exporter", "prometheus", "--prometheus-port", str(port)])


def test_missing_prometheus_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_prometheus(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("opentelemetry.exporter.prometheus"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    with pytest.raises(ExporterError, match=r"otel-bpf\[prometheus\]"):
        telemetry(["--exporter", "prometheus"])


def test_series_get_no_exemplar_reservoir_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.metrics import Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from otel_bpf.cli.exporters import _NO_EXEMPLARS, _no_exemplar_views

    monkeypatch.delenv("OTEL_METRICS_EXEMPLAR_FILTER", raising=False)
    views = _no_exemplar_views(None)
    assert len(views) == 1
    reader = InMemoryMetricReader()
    mp = MeterProvider(metric_readers=[reader], views=views, shutdown_on_exit=False)
    meter = mp.get_meter("t")
    meter.create_observable_counter(
        "c", callbacks=[lambda _o: [Observation(i, {"id": i}) for i in range(3)]]
    )
    meter.create_observable_gauge("g", callbacks=[lambda _o: [Observation(2.5, {"id": 1})]])
    data = reader.get_metrics_data()
    assert data is not None
    got = {
        m.name: sorted(
            (dict(p.attributes)["id"], p.value, len(p.exemplars)) for p in m.data.data_points
        )
        for m in data.resource_metrics[0].scope_metrics[0].metrics
    }
    assert got == {"c": [(0, 0, 0), (1, 1, 0), (2, 2, 0)], "g": [(1, 2.5, 0)]}
    # Every series shares the one empty reservoir.
    match = next(
        iter(
            mp._measurement_consumer._reader_storages[
                reader
            ]._instrument_view_instrument_matches.values()
        )
    )[0]
    assert all(a._reservoir is _NO_EXEMPLARS for a in match._attributes_aggregation.values())
    mp.shutdown()

    monkeypatch.setenv("OTEL_METRICS_EXEMPLAR_FILTER", "always_on")
    assert _no_exemplar_views("always_on") == []


def test_credentials_in_the_endpoint_are_not_shown() -> None:
    t = telemetry(["--endpoint", "http://user:s3cret@127.0.0.1:1", "--protocol", "http/protobuf"])
    try:
        assert t.targets == ["http://***@127.0.0.1:1/v1/metrics (OTLP http/protobuf)"]
    finally:
        t.shutdown(1)


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--endpoint", "http://user:s3cret@127.0.0.1:1"], {}, "--endpoint"),
        (
            [],
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://u:s3cret@h:4317"},
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        (
            [],
            {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://u:s3cret@h:4317"},
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ),
    ],
)
def test_credentials_in_a_grpc_endpoint_are_refused_without_echoing_them(
    argv: list[str], env: dict[str, str], named: str
) -> None:
    # gRPC would put them in its target name and repeat them in every error it reports.
    with pytest.raises(ConfigError) as caught:
        resolve(cli_args.parse_args([*argv, "--exporter", "otlp"]), env)
    message = str(caught.value)
    assert message.startswith(f"{named}: a gRPC endpoint cannot carry credentials")
    assert "s3cret" not in message
