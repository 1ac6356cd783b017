"""The CLI's OTLP encoder builds the very message the SDK's encoder builds, keeps each
attribute set's encoding from one export to the next only while a point uses it, and hands
what it does not handle to the SDK's encoder."""

from __future__ import annotations

import http.server
import threading
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.sdk.metrics import Exemplar, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from test_instruments import Feed, prog

from otel_bpf.cli.otlp_encode import MetricsEncoder
from otel_bpf.otel.instruments import create_instruments
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.records import Owner

ATTRS: list[dict[str, Any]] = [
    {"bpf.program.id": 7, "bpf.program.name": "xdp_pass", "bpf.program.type": "xdp"},
    {"flag": True, "ratio": 0.5, "raw": b"\x00\xff", "list": ["a", "b"], "ints": (1, 2)},
    {},
    {"bpf.program.name": "naïve\u202e\x1b[2J"},  # any text: encoded as given, sanitised later
]


def number(attrs: dict[str, Any], value: float | int, start: int = 10) -> NumberDataPoint:
    return NumberDataPoint(
        attributes=attrs, start_time_unix_nano=start, time_unix_nano=20, value=value, exemplars=[]
    )


def data(*metrics: Metric, resource: Resource | None = None) -> MetricsData:
    scope = InstrumentationScope("otel_bpf", "0.2.0", "https://example.test/s", {"k": "v"})
    return MetricsData(
        [
            ResourceMetrics(
                resource or Resource({"service.name": "bpftop-otel", "host.name": "h"}),
                [ScopeMetrics(scope, list(metrics), "https://example.test/s")],
                "https://example.test/r",
            )
        ]
    )


def sum_metric(name: str, points: list[NumberDataPoint], monotonic: bool = True) -> Metric:
    return Metric(
        name, "desc", "s", Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=monotonic)
    )


def gauge_metric(name: str, points: list[NumberDataPoint]) -> Metric:
    return Metric(name, "desc", "1", Gauge(points))


def test_sums_and_gauges_encode_as_the_sdk_encodes_them() -> None:
    md = data(
        sum_metric("runs", [number(a, i * 3) for i, a in enumerate(ATTRS)]),
        sum_metric("time", [number(a, i * 0.25) for i, a in enumerate(ATTRS)], monotonic=False),
        gauge_metric("count", [number(ATTRS[0], 4), number(ATTRS[2], 2.5)]),
        sum_metric("empty", []),
        gauge_metric("empty.gauge", []),
    )
    encoder = MetricsEncoder()
    assert encoder.encode(md) == encode_metrics(md)
    assert encoder.encode(md) == encode_metrics(md)  # from the cache, the same again
    assert encoder.fallbacks == 0


def test_a_real_collection_encodes_as_the_sdk_encodes_it() -> None:
    feed = Feed()
    reader = InMemoryMetricReader()
    mp = MeterProvider(
        metric_readers=[reader], resource=Resource({"service.name": "t"}), shutdown_on_exit=False
    )
    create_instruments(
        mp,
        feed,
        MetricsOptions(derived_gauges=True, owner_series=True, memory=True, include_tag=True),
    )
    owner = (Owner(pid=12, comm="agent", executable="agent", via=("prog",)),)
    feed.push([prog(1, owners=owner), prog(2, type="kprobe")])
    feed.push([prog(1, run_cnt=5, run_time_ns=900, owners=owner), prog(2, type="kprobe")])
    encoder = MetricsEncoder()
    for _ in range(2):
        md = reader.get_metrics_data()
        assert md is not None
        assert encoder.encode(md) == encode_metrics(md)
        encoder.end_export()
    assert encoder.fallbacks == 0
    mp.shutdown()


def test_an_attribute_set_is_encoded_once_while_points_use_it() -> None:
    gone = {"bpf.program.id": 99}
    encoder = MetricsEncoder()
    first = encoder.encode(data(sum_metric("runs", [number(ATTRS[0], 1), number(gone, 2)])))
    encoder.end_export()
    kept = first.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]

    # The same dict again (the SDK hands a series' one dict to every collection): the
    # cached encoding.
    second = encoder.encode(data(sum_metric("runs", [number(ATTRS[0], 3)])))
    encoder.end_export()
    again = second.resource_metrics[0].scope_metrics[0].metrics[0].sum.data_points[0]
    assert again.attributes == kept.attributes
    assert len(encoder._cache) == 1  # the unused set (a program gone) was dropped
    assert all(entry[0] is not gone for entry in encoder._cache.values())


def test_batches_of_one_export_share_the_cache_and_the_next_export_keeps_it() -> None:
    encoder = MetricsEncoder()
    batch_a = data(sum_metric("runs", [number(ATTRS[0], 1)]))
    batch_b = data(sum_metric("runs", [number(ATTRS[1], 1)]))
    encoder.encode(batch_a)
    encoder.encode(batch_b)
    encoder.end_export()
    assert {id(e[0]) for e in encoder._cache.values()} == {id(ATTRS[0]), id(ATTRS[1])}
    encoder.encode(batch_a)
    encoder.encode(batch_b)
    encoder.end_export()
    assert len(encoder._cache) == 2


@pytest.mark.parametrize(
    "odd",
    [
        pytest.param(
            Metric(
                "h",
                "",
                "s",
                Histogram(
                    [HistogramDataPoint({"a": 1}, 1, 2, 3, 4.0, [1, 2], [1.0], 0.5, 3.0)],
                    AggregationTemporality.CUMULATIVE,
                ),
            ),
            id="histogram",
        ),
        pytest.param(
            sum_metric(
                "runs",
                [
                    NumberDataPoint(
                        {"a": 1}, 1, 2, 3, exemplars=[Exemplar({"x": 1}, 2.0, 5, None, None)]
                    )
                ],
            ),
            id="exemplars",
        ),
        pytest.param(sum_metric("runs", [number({"odd": object()}, 1)]), id="attribute type"),
    ],
)
def test_what_it_does_not_handle_goes_to_the_sdk_encoder(odd: Metric) -> None:
    md = data(sum_metric("runs", [number(ATTRS[0], 1)]), odd)
    encoder = MetricsEncoder()
    # (An attribute of another type: the SDK's encoder logs it and leaves it out.)
    assert encoder.encode(md) == encode_metrics(md)
    assert encoder.fallbacks == 1


class _Collector(http.server.BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        assert length < 1 << 20
        type(self).bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_the_http_exporter_sends_what_the_sdk_encoder_builds() -> None:
    from otel_bpf.cli.otlp_http import BoundedReplySession, HttpMetricExporter

    _Collector.bodies = []
    server = http.server.HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    exporter = HttpMetricExporter(
        endpoint=f"http://127.0.0.1:{server.server_port}/v1/metrics",
        timeout=5,
        session=BoundedReplySession(),
    )
    try:
        md = data(sum_metric("runs", [number(a, i) for i, a in enumerate(ATTRS)]))
        for _ in range(2):
            assert exporter.export(md) is MetricExportResult.SUCCESS
        assert len(_Collector.bodies) == 2
        for body in _Collector.bodies:
            assert ExportMetricsServiceRequest.FromString(body) == encode_metrics(md)
        assert exporter.encoder.fallbacks == 0 and len(exporter.encoder._cache) == len(ATTRS)
    finally:
        exporter.shutdown()
        server.shutdown()
        server.server_close()
        thread.join(5)
