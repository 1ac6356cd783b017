"""OTLP encoding of the CLI's metrics, with each attribute set encoded once, not per export.

The SDK's encoder (``encode_metrics``, 1.45.2) builds a ``KeyValue`` and an ``AnyValue``
message from Python for every attribute of every point on every export: about 12 µs per
point with four attributes, most of an export's encoding at 1,000 programs.  A program's
attributes do not change while it lives, and the SDK hands each series' very same attribute
dict to every collection (it keeps the dict of the series' first measurement), so
:class:`MetricsEncoder` keeps each dict's attributes serialized (a ``NumberDataPoint`` with
only its ``attributes`` field, about 180 bytes), by identity, and each export parses them
into the point in C: about 1 µs per point.  (Kept as messages instead, each set would cost
about 3.4 KB: every message built from Python has its own arena.)

The result is the same message the SDK's encoder builds (``tests/unit/test_otlp_encode.py``
compares the two).  Anything this encoder does not handle itself (histograms, exemplars, an
attribute value that is not a string, bool, int, float, bytes or a sequence of those) sends
the whole export to the SDK's encoder, unchanged.

Entries live from one export to the next: :meth:`MetricsEncoder.end_export` drops those the
export did not use, so a program unloaded (its series gone) frees its entry, and the dicts
held keep their ids from being reused by other dicts while cached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.metrics.v1 import metrics_pb2 as pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.sdk.metrics.export import Gauge, MetricsData, Sum

__all__ = ["MetricsEncoder", "Unsupported"]


class Unsupported(Exception):
    """Something only the SDK's encoder handles."""


def _any_value(value: Any) -> AnyValue:
    # The order matters: bool is an int.
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, Sequence):
        return AnyValue(array_value=ArrayValue(values=[_any_value(v) for v in value]))
    raise Unsupported(f"attribute value of type {type(value).__name__}")


def _key_values(attributes: Mapping[str, Any] | None) -> list[KeyValue]:
    if not attributes:
        return []
    return [KeyValue(key=key, value=_any_value(value)) for key, value in attributes.items()]


class MetricsEncoder:
    """``encode(data)``: the ``ExportMetricsServiceRequest`` of ``data``, as the SDK's
    ``encode_metrics`` builds it; ``end_export()`` after each export (all its batches)."""

    def __init__(self) -> None:
        # id(attribute dict) -> (the dict, its attributes serialized): the dict is held so
        # that its id cannot name another dict while the entry lives.
        self._cache: dict[int, tuple[object, bytes]] = {}
        self._used: dict[int, tuple[object, bytes]] = {}
        self.fallbacks = 0
        """Exports handed to the SDK's encoder (something this one does not handle)."""

    def encode(self, data: MetricsData) -> ExportMetricsServiceRequest:
        try:
            return self._encode(data)
        except Unsupported:
            self.fallbacks += 1
            return encode_metrics(data)

    def end_export(self) -> None:
        """Forget the attribute sets the export just finished did not use."""
        self._cache, self._used = self._used, {}

    def _attributes(self, attributes: Mapping[str, Any] | None) -> bytes:
        # An entry holds its dict, so no other live dict can have its id: the id is enough.
        key = id(attributes)
        entry = self._used.get(key)
        if entry is None:
            entry = self._cache.get(key)
            if entry is None:
                blob = pb2.NumberDataPoint(attributes=_key_values(attributes)).SerializeToString()
                entry = (attributes, blob)
            self._used[key] = entry
        return entry[1]

    def _encode(self, data: MetricsData) -> ExportMetricsServiceRequest:
        request = ExportMetricsServiceRequest()
        for resource_metrics in data.resource_metrics:
            resource = resource_metrics.resource
            out_resource = request.resource_metrics.add(
                resource=Resource(attributes=_key_values(resource.attributes)),
                schema_url=resource.schema_url,
            )
            for scope_metrics in resource_metrics.scope_metrics:
                scope = scope_metrics.scope
                if scope is None:
                    raise Unsupported("a scope of None")
                out_scope = out_resource.scope_metrics.add(
                    scope=InstrumentationScope(
                        name=scope.name,
                        version=scope.version,  # type: ignore[arg-type]  # None: unset
                        attributes=_key_values(scope.attributes),
                    ),
                    schema_url=scope.schema_url,
                )
                for metric in scope_metrics.metrics:
                    self._metric(
                        metric,
                        out_scope.metrics.add(
                            name=metric.name, description=metric.description, unit=metric.unit
                        ),
                    )
        return request

    def _metric(self, metric: Any, out: pb2.Metric) -> None:
        data = metric.data
        if isinstance(data, Sum):
            points = data.data_points
            if points:  # as the SDK's encoder: no point, no ``sum`` field at all
                out.sum.aggregation_temporality = pb2.AggregationTemporality.ValueType(
                    data.aggregation_temporality
                )
                out.sum.is_monotonic = data.is_monotonic
            self._points(points, out.sum.data_points, start=True)
        elif isinstance(data, Gauge):
            self._points(data.data_points, out.gauge.data_points, start=False)
        else:
            raise Unsupported(type(data).__name__)

    def _points(self, points: Sequence[Any], out: Any, *, start: bool) -> None:
        attributes = self._attributes
        add = out.add
        for point in points:
            if point.exemplars:
                raise Unsupported("exemplars")
            if start:
                pt = add(
                    start_time_unix_nano=point.start_time_unix_nano,
                    time_unix_nano=point.time_unix_nano,
                )
            else:
                pt = add(time_unix_nano=point.time_unix_nano)
            blob = attributes(point.attributes)
            if blob:
                pt.MergeFromString(blob)
            value = point.value
            if isinstance(value, int):
                pt.as_int = value
            else:
                pt.as_double = value
