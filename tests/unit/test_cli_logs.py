"""Export failures: one WARNING per burst, one INFO when export resumes, no tracebacks."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from otel_bpf.cli.logs import (
    BurstReportingExporter,
    ExportLogGate,
    setup_logging,
    teardown_logging,
)

SDK_LOG = logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter")


class ScriptedExporter(MetricExporter):
    """Fails, succeeds or raises as scripted, logging like the OTLP exporter does."""

    def __init__(self, script: list[str]) -> None:
        super().__init__()
        self.script = script

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object
    ) -> MetricExportResult:
        step = self.script.pop(0)
        if step == "ok":
            return MetricExportResult.SUCCESS
        if step == "raise":
            raise ConnectionError("collector went away")
        SDK_LOG.warning("Transient error StatusCode.UNAVAILABLE encountered, retrying in 1s.")
        try:
            raise OSError("connection refused")
        except OSError:
            SDK_LOG.exception("Failed to export metrics to 127.0.0.1:1, error code: UNAVAILABLE")
        return MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        pass


class Captured:
    def __init__(self, gate: ExportLogGate, stream: io.StringIO) -> None:
        self.gate = gate
        self.stream = stream

    def read(self) -> str:
        text = self.stream.getvalue()
        self.stream.seek(0)
        self.stream.truncate()
        return text


@pytest.fixture
def logs() -> Iterator[Captured]:
    gate = ExportLogGate()
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging("info", gate, stream=stream)
    try:
        yield Captured(gate, stream)
    finally:
        teardown_logging([handler])
        root.setLevel(level)


def run(gate: ExportLogGate, script: list[str]) -> BurstReportingExporter:
    exporter = BurstReportingExporter(ScriptedExporter(list(script)), gate, "http://x:1 (OTLP)")
    data = MetricsData(resource_metrics=[])
    for _ in script:
        exporter.export(data)
    return exporter


def test_one_warning_per_burst_and_one_resumed_line(logs: Captured) -> None:
    exporter = run(logs.gate, ["fail"] * 5 + ["ok", "ok"] + ["raise", "fail", "fail"] + ["ok"])
    err = logs.read()
    lines = err.splitlines()
    warnings = [x for x in lines if " WARNING " in x]
    infos = [x for x in lines if " INFO " in x]
    assert len(warnings) == 2, err
    assert len(infos) == 2, err
    assert "export to http://x:1 (OTLP) failed: Failed to export metrics" in warnings[0]
    assert "ConnectionError: collector went away" in warnings[1]
    assert "resumed after 5 failed attempts" in infos[0]
    assert "resumed after 3 failed attempts" in infos[1]
    assert "Traceback" not in err and "Transient error" not in err
    assert len(lines) == 4
    assert exporter.exports_ok == 3 and not exporter.failing


def test_records_outside_an_export_pass_through(logs: Captured) -> None:
    SDK_LOG.warning("something unrelated to an export")
    logging.getLogger("bpftop-otel").info("ours")
    err = logs.read()
    assert "something unrelated to an export" in err and "ours" in err


def test_log_line_format(logs: Captured) -> None:
    logging.getLogger("bpftop-otel").warning("hello")
    line = logs.read().strip()
    date, level, rest = line.split(" ", 2)
    assert date.endswith("Z") and "T" in date
    assert level == "WARNING" and rest == "bpftop-otel: hello"


def test_debug_level_lets_every_attempt_through() -> None:
    gate = ExportLogGate()
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = setup_logging("debug", gate, stream=stream)
    try:
        run(gate, ["fail", "ok"])
    finally:
        teardown_logging([handler])
        root.setLevel(level)
    text = stream.getvalue()
    assert "Transient error" in text and "resumed after 1 failed attempt " in text


def test_every_line_is_escaped_and_hides_credentials() -> None:
    """Text a collector chooses (gRPC error details, an HTTP reason phrase) reaches the log."""
    stream = io.StringIO()
    handler = setup_logging("info", stream=stream)
    try:
        logging.getLogger("opentelemetry.exporter").warning(
            "Failed to export to http://user:s3cret@h:4318, reason: %s",
            "\x1b]0;TITLE\x07\x1b[2J\nforged line\x9b",
        )
    finally:
        teardown_logging([handler])
    out = stream.getvalue()
    assert out.count("\n") == 1, out
    assert not any(ch in out[:-1] for ch in "\x1b\x07\x9b\r\n"), repr(out)
    assert "\\x1b]0;TITLE\\x07" in out and "s3cret" not in out and "***@h:4318" in out
