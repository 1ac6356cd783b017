"""The OTLP/gRPC metric exporter with one deadline per export.

The SDK's gRPC exporter (1.45.2) splits one export into requests of at most
``max_export_batch_size`` points and gives each request the whole timeout with its own
retries, so a collector that accepts connections and never answers holds one export for
as many timeouts as there are batches (about 5.5 points per program: six at 1,000
programs).  :class:`BoundedGrpcMetricExporter` gives one export one deadline for all its
batches and retries, and stops at the first batch that fails.  It also encodes each
attribute set once for all exports (:class:`~otel_bpf.cli.otlp_encode.MetricsEncoder`)
instead of on every export.
"""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics.export import MetricExportResult, MetricsData

from otel_bpf.cli.config import REPLY_MAX_BYTES
from otel_bpf.cli.otlp_encode import MetricsEncoder

GRPC_CHANNEL_OPTIONS = (("grpc.max_receive_message_length", REPLY_MAX_BYTES),)
"""Replies are bounded as HTTP replies are (see otlp_http)."""


class ExportDeadlineExceeded(Exception):
    """The batches of one export did not all go out before its deadline."""


class BoundedGrpcMetricExporter(GrpcMetricExporter):
    """The SDK's gRPC metric exporter with one deadline per export, for all its batches.

    The deadline is the exporter's timeout, or the ``timeout_millis`` the reader passes
    when that is shorter (the final export at exit).  The SDK reads ``self._timeout`` when
    each request starts, so each batch is given what is left of the export's time.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._budget: float = self._timeout
        self._deadline: float | None = None
        self.encoder = MetricsEncoder()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        budget = min(self._budget, max(0.0, timeout_millis / 1000.0))
        self._deadline = time.monotonic() + budget
        try:
            if self._max_export_batch_size is None:
                return self._export_within_deadline(metrics_data)
            for batch in self._split_metrics_data(metrics_data):
                if self._export_within_deadline(batch) is not MetricExportResult.SUCCESS:
                    # The collector failed one batch (usually after using the whole
                    # deadline): the others would fail the same way.
                    return MetricExportResult.FAILURE
            return MetricExportResult.SUCCESS
        finally:
            self._deadline = None
            self._timeout = self._budget
            self.encoder.end_export()

    def _translate_data(self, data: MetricsData) -> ExportMetricsServiceRequest:
        return self.encoder.encode(data)

    def _export_within_deadline(self, data: MetricsData) -> MetricExportResult:
        assert self._deadline is not None
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise ExportDeadlineExceeded(
                f"export not finished within {self._budget:g} s (the OTLP timeout)"
            )
        self._timeout = remaining
        result: MetricExportResult = self._export(data)
        return result
