"""Invalid values for the flags and OTEL_* variables tests/e2e/test_cli_errors.py leaves out,
and a check that the two files together cover every flag the parser defines and every
OTEL_* variable the configuration reads.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from peers import cli_env, run_cli
from test_cli_errors import BAD_ENV, BAD_FLAGS, BAD_PROMETHEUS_ENV

from otel_bpf.cli import args as cli_args

pytestmark = [pytest.mark.timeout(60)]

PACKAGE = Path(cli_args.__file__).resolve().parents[1]
ENV_READS = re.compile(r"os\.environ|os\.getenv|environ\.get|\benv(iron)?\b")

MORE_FLAGS = [
    (["--count", "abc"], "--count"),
    (["--count", "1.5"], "--count"),
    (["--interval", "nan"], "--interval"),
    (["--interval", "inf"], "--interval"),
    (["--export-interval", "nan"], "--export-interval"),
    (["--export-interval", "abc"], "--export-interval"),
    (["--prometheus-port", "abc"], "--prometheus-port"),
    (["--endpoint", "http://[::1"], "--endpoint"),
    (["--endpoint", "http://collector:99999"], "--endpoint"),
    (["--sampling-path="], "--sampling-path"),
    (["--attributes="], "--attributes"),
    (["--demo=1"], "--demo"),
    (["--ascii=x"], "--ascii"),
    (["--owners=yes"], "--owners"),
    (["--derived-gauges=on"], "--derived-gauges"),
    (["--per-cpu=1"], "--per-cpu"),
    (["--attachments=yes"], "--attachments"),
    (["--owner-series=1"], "--owner-series"),
    (["--attachment-series=yes"], "--attachment-series"),
    (["--json=1"], "--json"),
    (["--live=1"], "--live"),
    (["--version=2"], "--version"),
    (["--help=1"], "--help"),
]

MORE_ENV = [
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:99999"),
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://[::1"),
    ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "/nonexistent/key.pem"),
    ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/nonexistent/cert.pem"),
    ("OTEL_EXPORTER_OTLP_METRICS_COMPRESSION", "zstd"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "nan"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "nan"),
    ("OTEL_METRIC_EXPORT_TIMEOUT", "inf"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "9e15"),
    ("OTEL_METRICS_EXEMPLAR_FILTER", "junk"),
]

MORE_PROMETHEUS_ENV = [("OTEL_EXPORTER_PROMETHEUS_PORT", "70000")]

ACCEPTS_ANY_TEXT = {"OTEL_SERVICE_NAME"}
"""Any non-empty text is a valid service name (control characters included: it is only
ever an attribute value)."""


def check(stderr: str, returncode: int, needle: str, status: int = 2) -> None:
    assert returncode == status, stderr
    assert "Traceback" not in stderr
    errors = [x for x in stderr.splitlines() if x.startswith("bpftop-otel: error:")]
    assert len(errors) == 1, stderr
    assert needle in errors[0], stderr


@pytest.mark.parametrize(("argv", "needle"), MORE_FLAGS, ids=[" ".join(a) for a, _ in MORE_FLAGS])
def test_more_invalid_flags(argv: list[str], needle: str) -> None:
    proc = run_cli([*argv, "--count", "1", "--exporter", "otlp"], timeout=30)
    check(proc.stderr, proc.returncode, needle)


@pytest.mark.parametrize(("name", "value"), MORE_ENV, ids=[n for n, _ in MORE_ENV])
def test_more_invalid_environment(name: str, value: str) -> None:
    proc = run_cli(["--count", "1"], timeout=30, env=cli_env(**{name: value}))
    check(proc.stderr, proc.returncode, name)


@pytest.mark.parametrize(
    ("name", "value"), MORE_PROMETHEUS_ENV, ids=[n for n, _ in MORE_PROMETHEUS_ENV]
)
def test_more_invalid_prometheus_environment(name: str, value: str) -> None:
    proc = run_cli(["--count", "1", "--exporter", "prometheus"], 30, cli_env(**{name: value}))
    check(proc.stderr, proc.returncode, name)


@pytest.mark.e2e
@pytest.mark.parametrize("host", ["256.1.1.1", "no-such-host.invalid"])
def test_prometheus_host_that_cannot_be_bound(host: str) -> None:
    """Only binding can tell: exit status 1 (a runtime failure) with one line."""
    env = cli_env(OTEL_EXPORTER_PROMETHEUS_HOST=host)
    proc = run_cli(["--count", "1", "--exporter", "prometheus"], 30, env)
    check(proc.stderr, proc.returncode, host, status=1)


def read_variables() -> set[str]:
    """Every OTEL_* variable read by any module of the package that reads the
    environment, the OTLP suffixes in both spellings."""
    names: set[str] = set()
    suffixes: set[str] = set()
    for module in sorted(PACKAGE.rglob("*.py")):
        text = module.read_text()
        if not ENV_READS.search(text):
            continue
        names |= set(re.findall(r'"(OTEL_[A-Z_]*[A-Z])"', text))
        suffixes |= set(re.findall(r'_otlp_env\(\w+, "([A-Z_]+)"\)', text))
        for found in re.findall(r"for suffix in \(([^)]*)\)", text):
            suffixes |= set(found.replace('"', "").split(", "))
    for suffix in suffixes:
        names |= {f"OTEL_EXPORTER_OTLP_{suffix}", f"OTEL_EXPORTER_OTLP_METRICS_{suffix}"}
    return names


def test_every_variable_read_is_tested_with_a_bad_value() -> None:
    read = read_variables()
    assert len(read) >= 20, sorted(read)
    tested = {n for n, _ in BAD_ENV + MORE_ENV + BAD_PROMETHEUS_ENV + MORE_PROMETHEUS_ENV}
    tested |= {"OTEL_EXPORTER_PROMETHEUS_HOST"} | ACCEPTS_ANY_TEXT
    assert read - tested == set(), "OTEL_* variables without an invalid-value test"


def test_every_flag_is_tested_with_a_bad_value() -> None:
    flags = {
        opt
        for action in cli_args.build_parser()._actions
        for opt in action.option_strings
        if opt.startswith("--")
    }
    tested = {argv[0].split("=")[0] for argv, _ in BAD_FLAGS + MORE_FLAGS}
    assert flags - tested == set(), "flags without an invalid-value test"
