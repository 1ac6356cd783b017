"""Command-line parsing: defaults, every option validated, usage errors exit 2 with one line."""

from __future__ import annotations

import pytest

from otel_bpf.cli import args as cli_args


def test_defaults() -> None:
    ns = cli_args.parse_args([])
    assert ns.interval == 1.0
    assert ns.count is None
    assert not ns.live and not ns.json and not ns.demo and not ns.owners
    assert ns.ascii is None
    # Options whose default depends on the environment stay None until config.resolve.
    assert ns.exporter is None and ns.endpoint is None and ns.protocol is None
    assert ns.export_interval is None and ns.log_level is None
    assert ns.prometheus_host is None and ns.prometheus_port is None
    assert ns.attributes == "per-program"
    assert ns.sampling_path == "auto"
    assert ns.types is None and ns.names is None and ns.owner_names is None
    assert ns.derived_gauges is False


def test_all_options() -> None:
    ns = cli_args.parse_args(
        [
            "--json",
            "--count",
            "3",
            "--interval",
            "0.5",
            "--demo",
            "--owners",
            "--exporter",
            "otlp,prometheus",
            "--endpoint",
            "http://127.0.0.1:4317",
            "--protocol",
            "http/protobuf",
            "--export-interval",
            "2.5",
            "--prometheus-host",
            "::1",
            "--prometheus-port",
            "0",
            "--attributes",
            "by-name-type",
            "--derived-gauges",
            "--type",
            "xdp",
            "--type",
            "socket_filter",
            "--name",
            "otel_demo_*",
            "--owner",
            "cilium-agent",
            "--log-level",
            "DEBUG",
        ]
    )
    assert ns.json and ns.demo and ns.owners and ns.derived_gauges
    assert ns.count == 3 and ns.interval == 0.5 and ns.export_interval == 2.5
    assert ns.exporter == ("otlp", "prometheus")
    assert ns.protocol == "http/protobuf"
    assert ns.prometheus_host == "::1" and ns.prometheus_port == 0
    assert ns.types == ["xdp", "socket_filter"]
    assert ns.names == ["otel_demo_*"] and ns.owner_names == ["cilium-agent"]
    assert ns.log_level == "debug"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("otlp", ("otlp",)),
        ("none", ()),
        ("OTLP, console", ("otlp", "console")),
        ("prometheus", ("prometheus",)),
    ],
)
def test_exporter_list(text: str, expected: tuple[str, ...]) -> None:
    assert cli_args.exporter_list(text) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "0.05"], "between 0.1 and 3600"),
        (["--interval", "3601"], "between 0.1 and 3600"),
        (["--interval", "nan"], "between 0.1 and 3600"),
        (["--interval", "fast"], "must be a number"),
        (["--count", "0"], "1 or more"),
        (["--count", "1.5"], "whole number"),
        (["--exporter", "jaeger"], "unknown exporter 'jaeger'"),
        (["--exporter", "none,otlp"], "cannot be combined"),
        (["--exporter", "otlp,otlp"], "listed twice"),
        (["--exporter", "otlp,"], "empty exporter name"),
        (["--protocol", "http/json"], "invalid choice"),
        (["--endpoint", " "], "must not be empty"),
        (["--export-interval", "0"], "between 0.1 and 86400"),
        (["--prometheus-port", "65536"], "0..65535"),
        (["--prometheus-port", "http"], "port number"),
        (["--prometheus-host", ""], "must not be empty"),
        (["--attributes", "all"], "invalid choice"),
        (["--sampling-path", "kprobe"], "invalid choice"),
        (["--name", "a\x1bb"], "control characters"),
        (["--log-level", "loud"], "invalid choice"),
        (["--live", "--json"], "cannot be combined with --live"),
        (["--json", "--per-cpu", "--sampling-path", "syscall"], "only the iterator path"),
        (["--bogus"], "unrecognized arguments"),
        (["--int", "2"], "unrecognized arguments"),
    ],
)
def test_invalid_exits_2_with_one_clear_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        cli_args.parse_args(argv)
    assert info.value.code == cli_args.EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("bpftop-otel: error:")
    assert err.count("\n") == 1, err  # one line: no usage block
    assert err.endswith("(see bpftop-otel --help)\n")
    assert "Traceback" not in err


def test_help_documents_every_option_default_and_env(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_args.parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    parser = cli_args.build_parser()
    for action in parser._actions:
        for opt in action.option_strings:
            assert opt in out
        if action.option_strings and action.help and action.dest not in ("help", "version"):
            assert "default" in action.help, action.option_strings
    for env in (
        "OTEL_METRICS_EXPORTER",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_METRIC_EXPORT_INTERVAL",
        "OTEL_EXPORTER_PROMETHEUS_PORT",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SERVICE_NAME",
    ):
        assert env in out
    for code in ("0 ", "1 ", "2 ", "77"):
        assert f"  {code}" in out
    flat = " ".join(out.split())
    assert "off when it exits" in flat
    assert "releases them after three export intervals without a collection" in flat


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from otel_bpf import __version__

    with pytest.raises(SystemExit) as info:
        cli_args.parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"bpftop-otel {__version__}"
