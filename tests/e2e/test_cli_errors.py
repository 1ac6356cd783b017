"""Bad input to the real ``bpftop-otel`` process: every flag and every OTEL_* variable it
reads, given an invalid value, gives one clear message, exit status 2 and no traceback.

These runs fail before touching the kernel, so they need no privileges.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from peers import cli_command, cli_env, run_cli

pytestmark = [pytest.mark.timeout(60)]

BAD_FLAGS = [
    (["--interval", "0"], "--interval"),
    (["--interval", "abc"], "--interval"),
    (["--count", "-1"], "--count"),
    (["--exporter", "jaeger"], "--exporter"),
    (["--endpoint", "127.0.0.1:4317"], "--endpoint"),
    (["--protocol", "thrift"], "--protocol"),
    (["--export-interval", "-5"], "--export-interval"),
    (["--prometheus-host", ""], "--prometheus-host"),
    (["--prometheus-port", "99999"], "--prometheus-port"),
    (["--attributes", "everything"], "--attributes"),
    (["--sampling-path", "perf"], "--sampling-path"),
    (["--type", ""], "--type"),
    (["--type", "no_such_type"], "--type"),
    (["--type", "re:^tc_"], "--type"),
    (["--name", ""], "--name"),
    (["--name", "re:("], "--name"),
    (["--owner", ""], "--owner"),
    (["--log-level", "verbose"], "--log-level"),
    (["--live", "--json"], "--json"),
    (["--no-such-flag"], "--no-such-flag"),
]

BAD_ENV = [
    ("OTEL_METRICS_EXPORTER", "otlp,kafka"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "grpc://collector:4317"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpcs"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "authorization"),
    ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x y=1"),
    ("OTEL_EXPORTER_OTLP_INSECURE", "maybe"),
    ("OTEL_EXPORTER_OTLP_METRICS_INSECURE", "on"),
    ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
    ("OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "/nonexistent/ca.pem"),
    ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/nonexistent/key.pem"),
    ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_CERTIFICATE", "/nonexistent/cert.pem"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "ten"),
    ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "0"),
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "brotli"),
    ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "sometimes"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
    ("OTEL_METRIC_EXPORT_TIMEOUT", "-1"),
    ("OTEL_RESOURCE_ATTRIBUTES", "novalue"),
    ("OTEL_LOG_LEVEL", "trace"),
]

BAD_PROMETHEUS_ENV = [("OTEL_EXPORTER_PROMETHEUS_PORT", "port")]


def check(proc_stderr: str, returncode: int, needle: str) -> None:
    assert returncode == 2, proc_stderr
    assert "Traceback" not in proc_stderr
    errors = [x for x in proc_stderr.splitlines() if x.startswith("bpftop-otel: error:")]
    assert len(errors) == 1, proc_stderr
    assert needle in errors[0], proc_stderr


@pytest.mark.parametrize(("argv", "needle"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_invalid_flag(argv: list[str], needle: str) -> None:
    proc = run_cli([*argv, "--count", "1"], timeout=30)
    check(proc.stderr, proc.returncode, needle)
    # The one line and nothing else (no usage block, on either stream).
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == "", proc.stdout


def test_parser_error_points_to_help() -> None:
    proc = run_cli(["--no-such-flag"], timeout=30)
    assert proc.stderr == (
        "bpftop-otel: error: unrecognized arguments: --no-such-flag (see bpftop-otel --help)\n"
    )


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace is not installed")
def test_missing_prometheus_extra_is_reported_before_any_bpf_call(tmp_path: Path) -> None:
    # A prometheus_client that cannot be imported stands for the extra not installed.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "prometheus_client.py").write_text("raise ImportError('not installed')\n")
    trace = tmp_path / "bpf.trace"
    env = cli_env(PYTHONPATH=str(shadow))
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=bpf", "-o", str(trace), *cli_command(),
         "--exporter", "prometheus", "--count", "1"],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("bpftop-otel: error:")]
    assert len(errors) == 1 and "optional extra" in errors[0], proc.stderr
    calls = [line for line in trace.read_text().splitlines() if "bpf(" in line]
    assert not calls, "bpf() called before the missing extra was reported:\n" + "\n".join(calls[:5])


@pytest.mark.parametrize(("name", "value"), BAD_ENV, ids=[n for n, _ in BAD_ENV])
def test_invalid_environment(name: str, value: str) -> None:
    proc = run_cli(["--count", "1"], timeout=30, env=cli_env(**{name: value}))
    check(proc.stderr, proc.returncode, name)


@pytest.mark.parametrize(
    ("name", "value"), BAD_PROMETHEUS_ENV, ids=[n for n, _ in BAD_PROMETHEUS_ENV]
)
def test_invalid_prometheus_environment(name: str, value: str) -> None:
    proc = run_cli(
        ["--count", "1", "--exporter", "prometheus"], timeout=30, env=cli_env(**{name: value})
    )
    check(proc.stderr, proc.returncode, name)
