"""The OTLP/HTTP exporter: its transport reads a bounded amount of any reply, and its
encoder encodes each attribute set once.

The SDK's HTTP exporter (1.45.2) reads a reply body whole, whatever length the collector
announces (``Content-Length: 1500000000`` is 1.5 GB in memory, and the export counted as
done).  :class:`BoundedReplySession` reads at most ``REPLY_MAX_BYTES`` of it (enough for an
``ExportMetricsServiceResponse`` with an error message) and fails the export beyond that.

:class:`HttpMetricExporter` encodes with :class:`~otel_bpf.cli.otlp_encode.MetricsEncoder`
(the same request as the SDK's encoder, without re-encoding every attribute every export).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import requests
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as SdkHttpMetricExporter,
)
from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData

from otel_bpf.cli.config import REPLY_MAX_BYTES
from otel_bpf.cli.otlp_encode import MetricsEncoder

_logger = logging.getLogger(__name__)

_READ_CHUNK = 4096


class ReplyTooLarge(Exception):
    """A collector's reply body is larger than ``REPLY_MAX_BYTES``."""


class BoundedReplySession(requests.Session):
    """A requests session that reads at most ``REPLY_MAX_BYTES`` of any reply body, and
    stops reading when the request's timeout has passed (a collector that sends one byte
    at a time would otherwise restart the read timeout with every byte)."""

    def request(  # type: ignore[override]
        self, method: str, url: str, *args: Any, **kwargs: Any
    ) -> requests.Response:
        kwargs["stream"] = True
        timeout = kwargs.get("timeout")
        started = time.monotonic()
        response = super().request(method, url, *args, **kwargs)
        try:
            body = bytearray()
            while len(body) <= REPLY_MAX_BYTES:
                if isinstance(timeout, (int, float)) and time.monotonic() - started > timeout:
                    raise requests.ReadTimeout(f"reply not read within {timeout:g} s")
                chunk = response.raw.read(_READ_CHUNK, decode_content=True)
                if not chunk:
                    break
                body += chunk
        finally:
            # Closes the connection when the body was not read to its end.
            response.close()
        if len(body) > REPLY_MAX_BYTES:
            raise ReplyTooLarge(
                f"the collector's reply is larger than {REPLY_MAX_BYTES // 1024} KiB (not read)"
            )
        response._content = bytes(body)
        return response


class HttpMetricExporter(SdkHttpMetricExporter):
    """The SDK's OTLP/HTTP metric exporter, encoding with a :class:`MetricsEncoder`.

    The SDK's ``export`` calls its module's encoder directly, so this one does what it does
    (1.45.2) around our encoder: one request through ``_export_batch``, which sizes, sends
    and retries it.  With a batch size set, or after shutdown, the SDK's own ``export`` runs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.encoder = MetricsEncoder()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float | None = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self._shutdown or self._max_export_batch_size is not None:
            result: MetricExportResult = super().export(metrics_data, timeout_millis, **kwargs)
            return result
        try:
            try:
                request = self.encoder.encode(metrics_data)
            except Exception as error:  # as the SDK's export: a failed export, not a crash
                _logger.error("Failed to encode metrics batch: %s", error)
                return MetricExportResult.FAILURE
            result = self._export_batch(request)
            return result
        finally:
            self.encoder.end_export()
