"""A collector that accepts connections and never answers, on 127.0.0.1.

One export (all its batches and retries) ends within the OTLP timeout, and the plugin
keeps stats on while its reader is stuck inside such an export: a reader that is
exporting is reading.
"""

from __future__ import annotations

import io
import signal
import subprocess
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
from peers import SilentCollector, cli_command, cli_env, holds_stats_fd, run_cli, wait_until

from otel_bpf import BpfMetricsPlugin, MetricsOptions
from otel_bpf.cli import args as cli_args
from otel_bpf.cli.config import resolve
from otel_bpf.cli.exporters import GRPC_EXPORT_BATCH_POINTS, build_telemetry
from otel_bpf.cli.logs import ExportLogGate, setup_logging, teardown_logging

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


@pytest.mark.e2e
def test_json_exports_nothing_unless_asked() -> None:
    started = time.monotonic()
    proc = run_cli(["--json", "--count", "2", "--interval", "0.2"], timeout=60)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert "no exporter" in proc.stderr, proc.stderr
    assert "4317" not in proc.stderr and "retried" not in proc.stderr, proc.stderr
    assert took < 8.0, f"--json --count 2 took {took:.1f} s"


@pytest.mark.e2e
def test_no_message_at_exit_promises_a_retry() -> None:
    """The only export is the final one, to a collector that never answers."""
    with SilentCollector(lifetime=60) as silent:
        args = ["--count", "2", "--interval", "0.2", "--endpoint", silent.url]
        proc = run_cli(args, timeout=60, env=cli_env(OTEL_EXPORTER_OTLP_TIMEOUT="1"))
    assert proc.returncode == 0, proc.stderr
    warnings = [x for x in proc.stderr.splitlines() if " WARNING " in x]
    assert warnings, proc.stderr
    assert not any("retried" in x or "retry" in x for x in warnings), proc.stderr
    assert any("final export" in x for x in warnings), proc.stderr


def test_http_reply_body_is_read_bounded() -> None:
    """A 200 reply with a 1 MiB body: not read whole, and not counted as a success."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = b"x" * (1 << 20)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        ns = cli_args.parse_args(["--endpoint", url, "--protocol", "http/protobuf"])
        gate = ExportLogGate()
        handler = setup_logging("info", gate, stream=io.StringIO())
        telemetry = build_telemetry(resolve(ns, {"OTEL_EXPORTER_OTLP_TIMEOUT": "5"}), gate)
        assert telemetry.otlp is not None
        try:
            result = telemetry.otlp.export(many_points(10), timeout_millis=5000)
        finally:
            teardown_logging([handler])
        assert result is MetricExportResult.FAILURE
        assert "larger than 64 KiB" in telemetry.otlp.last_reason
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.e2e
def test_tls_to_a_plaintext_port_gives_one_warning_and_no_other_line() -> None:
    """gRPC's C core logs each failed handshake to stderr itself, past the log handler."""
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        args = ["--count", "8", "--interval", "0.5", "--export-interval", "0.5",
                "--endpoint", url]  # fmt: skip
        proc = run_cli(args, timeout=60, env=cli_env(OTEL_EXPORTER_OTLP_TIMEOUT="1"))
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    foreign = [x for x in lines if not x.startswith("20")]
    assert foreign == [], proc.stderr
    warnings = [x for x in lines if " WARNING " in x and " export to" in x and "final" not in x]
    assert len(warnings) == 1, proc.stderr


@pytest.mark.e2e
def test_a_second_sigterm_cuts_a_stuck_final_export_short_and_still_cleans_up() -> None:
    """The first SIGTERM starts the final export (which the silent collector holds for its
    whole timeout); the second ends it at once, and the cleanup still runs."""
    with SilentCollector(lifetime=60) as silent:
        cli = subprocess.Popen(
            [*cli_command(), "--demo", "--interval", "0.2", "--endpoint", silent.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=cli_env(OTEL_EXPORTER_OTLP_TIMEOUT="30"), text=True,
        )  # fmt: skip
        try:
            assert wait_until(lambda: holds_stats_fd(cli.pid), 45), "stats never held"
            cli.send_signal(signal.SIGTERM)
            assert wait_until(lambda: silent.accepted >= 1, 10), "no final export"
            time.sleep(0.5)
            assert cli.poll() is None, "the final export did not wait for the collector"
            second = time.monotonic()
            cli.send_signal(signal.SIGTERM)
            _, err = cli.communicate(timeout=10)
            took = time.monotonic() - second
        finally:
            if cli.poll() is None:
                cli.kill()
                cli.communicate(timeout=5)
    assert cli.returncode == 0, err
    assert took < 1.0, f"exit took {took:.2f} s after the second SIGTERM"
    assert "final export cut short by a second signal" in err, err
    assert "stats now off" in err, err
    assert "Traceback" not in err, err
