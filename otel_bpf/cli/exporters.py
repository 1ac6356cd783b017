"""Build the MeterProvider of a ``bpftop-otel`` run from a validated ``Config``.

The OTLP exporter classes read a few ``OTEL_EXPORTER_OTLP_*`` variables themselves but
ignore ``..._PROTOCOL`` (the SDK's auto-configuration picks the class); here the class is
chosen from the resolved protocol and every setting is passed explicitly, so what
``config.resolve`` validated is exactly what is used.
"""

from __future__ import annotations

import inspect
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    ExemplarFilter,
    ExemplarReservoir,
    MeterProvider,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource

from otel_bpf.cli.config import Config, OtlpSettings, redact_url
from otel_bpf.cli.logs import BurstReportingExporter, ExportLogGate
from otel_bpf.cli.prometheus_server import MetricsServer, start_metrics_server
from otel_bpf.otel import names


class ExporterError(RuntimeError):
    """An exporter could not be set up (missing extra, port in use); message for the user."""


@dataclass
class Telemetry:
    """The meter provider and what must be stopped with it."""

    provider: MeterProvider | None
    targets: list[str] = field(default_factory=list)
    """Human descriptions of where metrics go, for the start-up log line."""
    otlp: BurstReportingExporter | None = None
    _servers: list[MetricsServer] = field(default_factory=list)
    _shut_down: bool = False

    def shutdown(self, timeout: float) -> None:
        """Final collection and export (force_flush, then shutdown), bounded by ``timeout``.

        Runs once; later calls do nothing (the SDK logs a warning on a second shutdown).
        """
        if self._shut_down:
            return
        self._shut_down = True
        if self.otlp is not None:
            self.otlp.final()
        if self.provider is not None:
            timeout_ms = max(1, int(timeout * 1000))
            try:
                self.provider.force_flush(timeout_millis=timeout_ms // 2)
            finally:
                self.provider.shutdown(timeout_millis=timeout_ms // 2)
        for server in self._servers:
            server.close()
        self._servers.clear()

    def abort(self) -> None:
        """Stop an OTLP export that is still retrying (after the final-export timeout)."""
        if self.otlp is not None:
            self.otlp.abort()


GRPC_EXPORT_BATCH_POINTS = 1000


def _exemplar_filter(name: str | None) -> ExemplarFilter:
    """No exemplars unless OTEL_METRICS_EXEMPLAR_FILTER asks: observable instruments have
    none to give, and the SDK's default filter looks up the current span per data point."""
    if name == "always_on":
        return AlwaysOnExemplarFilter()
    if name == "trace_based":
        return TraceBasedExemplarFilter()
    return AlwaysOffExemplarFilter()


class _NoExemplars(ExemplarReservoir):
    """A reservoir that keeps nothing.  Stateless, so one instance serves every series."""

    def offer(self, *args: Any, **kwargs: Any) -> None:
        pass

    def collect(self, point_attributes: Any) -> list[Any]:
        return []


_NO_EXEMPLARS = _NoExemplars()


def _no_exemplar_views(exemplar_filter: str | None) -> list[View]:
    """Views giving every series the empty reservoir, unless exemplars were asked for.

    The SDK builds a sampling reservoir (a dict and a lock) for every attribute set even when
    the exemplar filter is off, and visits it at every collection: about 1 MB and a few
    per cent of a collection at 1,000 programs.  (SDKs whose View lacks the parameter keep
    their default.)
    """
    if exemplar_filter is not None:
        return []
    if "exemplar_reservoir_factory" not in inspect.signature(View).parameters:
        return []
    return [
        View(
            instrument_name="*",
            exemplar_reservoir_factory=lambda _aggregation: lambda **_: _NO_EXEMPLARS,
        )
    ]


def _grpc_exporter(otlp: OtlpSettings) -> MetricExporter:
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        # gRPC's C core writes its own lines to stderr (one "Handshake failed" per attempt
        # when TLS meets a plaintext port), past our log handler and over the live view;
        # the reason reaches the export WARNING anyway.  It reads the variable once, when
        # grpc is first imported.  (A value the user set is kept.)
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    import grpc  # type: ignore[import-untyped]
    from grpc import Compression as GrpcCompression

    from otel_bpf.cli.otlp_grpc import GRPC_CHANNEL_OPTIONS, BoundedGrpcMetricExporter

    credentials = None
    if not otlp.insecure:

        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        try:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=read(otlp.certificate),
                private_key=read(otlp.client_key),
                certificate_chain=read(otlp.client_certificate),
            )
        except OSError as exc:
            raise ExporterError(f"cannot read TLS file: {exc}") from None
    compression = {
        "gzip": GrpcCompression.Gzip,
        "none": GrpcCompression.NoCompression,
        None: None,
    }[otlp.compression]
    return BoundedGrpcMetricExporter(
        endpoint=otlp.endpoint,
        insecure=otlp.insecure,
        credentials=credentials,
        headers=dict(otlp.headers),
        timeout=otlp.timeout,
        compression=compression,
        # Requests of at most this many points: the protobuf of one export is built batch by
        # batch, so the exporter's peak memory stays flat however many programs are loaded.
        max_export_batch_size=GRPC_EXPORT_BATCH_POINTS,
        channel_options=GRPC_CHANNEL_OPTIONS,
    )


def _http_exporter(otlp: OtlpSettings) -> MetricExporter:
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression

    from otel_bpf.cli.otlp_http import BoundedReplySession, HttpMetricExporter

    compression = {
        "gzip": HttpCompression.Gzip,
        "none": HttpCompression.NoCompression,
        None: None,
    }[otlp.compression]
    return HttpMetricExporter(
        endpoint=otlp.endpoint,
        certificate_file=otlp.certificate,
        client_key_file=otlp.client_key,
        client_certificate_file=otlp.client_certificate,
        headers=dict(otlp.headers),
        timeout=otlp.timeout,
        compression=compression,
        session=BoundedReplySession(),
    )


def otlp_exporter(otlp: OtlpSettings) -> MetricExporter:
    """The OTLP metric exporter class of the resolved protocol, configured explicitly."""
    if otlp.protocol == "grpc":
        return _grpc_exporter(otlp)
    return _http_exporter(otlp)


PROMETHEUS_EXTRA_MISSING = (
    "the prometheus exporter needs the optional extra: "
    "pip install 'otel-bpf[prometheus]' (opentelemetry-exporter-prometheus)"
)


def _prometheus_reader(host: str, port: int) -> tuple[MetricReader, MetricsServer]:
    try:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry
    except ImportError:
        raise ExporterError(PROMETHEUS_EXTRA_MISSING) from None
    # A private registry: only our metrics, no process/platform collectors of this Python.
    registry = CollectorRegistry(auto_describe=True)
    reader = PrometheusMetricReader(registry=registry)
    try:
        # Not prometheus_client's start_http_server: a thread per connection (see
        # prometheus_server.py); the same WSGI app, so the same exposition.
        server = start_metrics_server(host, port, registry)
    except OSError as exc:
        raise ExporterError(
            f"cannot listen on {host}:{port} for Prometheus: {exc.strerror or exc}"
        ) from None
    return reader, server


def build_telemetry(
    config: Config, gate: ExportLogGate, *, sampling_path: str | None = None
) -> Telemetry:
    """The meter provider for ``config.exporters`` (None when there is no exporter).

    ``sampling_path``, the path the sampler reads programs through, becomes the resource
    attribute ``bpf.sampling.path`` (it overrides one given in OTEL_RESOURCE_ATTRIBUTES:
    the resource should say what the run does).
    """
    if not config.exporters:
        return Telemetry(provider=None)
    readers: list[MetricReader] = []
    telemetry = Telemetry(provider=None)
    interval_ms = config.export_interval * 1000.0
    timeout_ms = config.export_timeout * 1000.0
    try:
        for name in config.exporters:
            if name == "otlp":
                assert config.otlp is not None
                target = f"{redact_url(config.otlp.endpoint)} (OTLP {config.otlp.protocol})"
                wrapped = BurstReportingExporter(otlp_exporter(config.otlp), gate, target)
                telemetry.otlp = wrapped
                readers.append(
                    PeriodicExportingMetricReader(
                        wrapped,
                        export_interval_millis=interval_ms,
                        export_timeout_millis=timeout_ms,
                    )
                )
                telemetry.targets.append(target)
            elif name == "console":
                # With --json, stdout carries JSON Lines; console metrics go to stderr.
                out = sys.stderr if config.json else sys.stdout
                readers.append(
                    PeriodicExportingMetricReader(
                        ConsoleMetricExporter(out=out),
                        export_interval_millis=interval_ms,
                        export_timeout_millis=timeout_ms,
                    )
                )
                telemetry.targets.append("console")
            elif name == "prometheus":
                reader, server = _prometheus_reader(config.prometheus_host, config.prometheus_port)
                telemetry._servers.append(server)
                readers.append(reader)
                host, port = server.server_address[:2]
                shown = f"[{host}]" if ":" in str(host) else str(host)
                telemetry.targets.append(f"http://{shown}:{port}/metrics (Prometheus)")
    except BaseException:
        for server in telemetry._servers:
            server.close()
        raise
    attributes = dict(config.resource_attributes)
    if sampling_path is not None:
        attributes[names.SAMPLING_PATH] = sampling_path
    resource = Resource.create(attributes)
    telemetry.provider = MeterProvider(
        metric_readers=readers,
        resource=resource,
        shutdown_on_exit=False,
        exemplar_filter=_exemplar_filter(config.exemplar_filter),
        views=_no_exemplar_views(config.exemplar_filter),
    )
    return telemetry
