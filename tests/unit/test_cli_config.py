"""Flags merged with the OTEL_* environment: precedence, defaults, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from otel_bpf.cli import args as cli_args
from otel_bpf.cli.config import (
    DEFAULT_SERVICE_NAME,
    Config,
    ConfigError,
    OtlpSettings,
    parse_headers,
    parse_key_values,
    resolve,
)


def cfg(argv: list[str], env: dict[str, str] | None = None) -> Config:
    return resolve(cli_args.parse_args(argv), env or {})


def otlp(argv: list[str], env: dict[str, str] | None = None) -> OtlpSettings:
    settings = cfg(argv, env).otlp
    assert settings is not None
    return settings


def test_defaults_follow_the_sdk() -> None:
    c = cfg([])
    assert c.exporters == ("otlp",)
    assert c.export_interval == 60.0 and c.export_timeout == 30.0
    assert c.log_level == "info"
    assert c.resource_attributes == {"service.name": DEFAULT_SERVICE_NAME}
    o = otlp([])
    assert o.protocol == "grpc" and o.endpoint == "http://localhost:4317"
    assert o.insecure is True and o.timeout == 10.0 and dict(o.headers) == {}


def test_default_otlp_timeout_follows_a_short_export_interval() -> None:
    assert otlp(["--export-interval", "3"]).timeout == 3.0
    assert otlp(["--export-interval", "0.2"]).timeout == 1.0
    assert otlp(["--export-interval", "30"]).timeout == 10.0
    assert otlp(["--export-interval", "2"], {"OTEL_EXPORTER_OTLP_TIMEOUT": "7"}).timeout == 7.0


def test_live_alone_exports_nothing_unless_asked() -> None:
    assert cfg(["--live"]).exporters == ()
    assert cfg(["--json"]).exporters == ()
    assert cfg(["--json"], {"OTEL_METRICS_EXPORTER": "otlp"}).exporters == ("otlp",)
    assert cfg(["--json", "--endpoint", "http://h:4317"]).exporters == ("otlp",)
    assert cfg(["--live"], {"OTEL_METRICS_EXPORTER": "otlp"}).exporters == ("otlp",)
    assert cfg(["--live", "--exporter", "prometheus"]).exporters == ("prometheus",)


def test_flags_win_over_env() -> None:
    env = {
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "OTEL_LOG_LEVEL": "error",
    }
    c = cfg(
        [
            "--exporter",
            "otlp",
            "--protocol",
            "grpc",
            "--endpoint",
            "http://flag:4317",
            "--export-interval",
            "2",
            "--log-level",
            "debug",
        ],
        env,
    )
    assert c.exporters == ("otlp",)
    assert c.otlp is not None and c.otlp.protocol == "grpc"
    assert c.otlp.endpoint == "http://flag:4317"
    assert c.export_interval == 2.0 and c.log_level == "debug"
    c2 = cfg([], env)
    assert c2.exporters == ("console",) and c2.export_interval == 5.0 and c2.log_level == "error"


def test_http_endpoint_rules() -> None:
    http = ["--protocol", "http/protobuf"]
    assert otlp(http).endpoint == "http://localhost:4318/v1/metrics"
    # The generic variable and the flag are base URLs: the signal path is appended.
    assert (
        otlp(http, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}).endpoint
        == "http://c:4318/v1/metrics"
    )
    assert otlp([*http, "--endpoint", "http://c:1/v1/metrics"]).endpoint == "http://c:1/v1/metrics"
    assert otlp([*http, "--endpoint", "http://c:1/otlp"]).endpoint == "http://c:1/otlp/v1/metrics"
    # The metrics-specific variable is used verbatim, and beats the generic one.
    env = {
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://m:9/custom",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
    }
    assert otlp(http, env).endpoint == "https://m:9/custom"


def test_metrics_specific_variables_win() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "b=2",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "3",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "4.5",
    }
    o = otlp([], env)
    assert o.protocol == "http/protobuf"
    assert dict(o.headers) == {"b": "2"}
    assert o.timeout == 4.5


def test_empty_variables_count_as_unset() -> None:
    env = {
        "OTEL_METRICS_EXPORTER": "",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "  ",
        "OTEL_SERVICE_NAME": "",
    }
    c = cfg([], env)
    assert c.exporters == ("otlp",)
    assert c.otlp is not None and c.otlp.endpoint == "http://localhost:4317"
    assert c.resource_attributes["service.name"] == DEFAULT_SERVICE_NAME


def test_insecure_and_tls_files(tmp_path: Path) -> None:
    assert otlp(["--endpoint", "https://c:4317"]).insecure is False
    assert otlp(["--endpoint", "http://c:4317"]).insecure is True
    env = {"OTEL_EXPORTER_OTLP_INSECURE": "false"}
    assert otlp(["--endpoint", "http://c:4317"], env).insecure is False
    # https always means TLS, whatever INSECURE says.
    assert (
        otlp(["--endpoint", "https://c:4317"], {"OTEL_EXPORTER_OTLP_INSECURE": "TRUE"}).insecure
        is False
    )
    ca, key, cert = (tmp_path / n for n in ("ca.pem", "key.pem", "cert.pem"))
    for f in (ca, key, cert):
        f.write_text("-----BEGIN-----\n")
    o = otlp(
        [],
        {
            "OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca),
            "OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY": str(key),
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(cert),
        },
    )
    assert (o.certificate, o.client_key, o.client_certificate) == (str(ca), str(key), str(cert))


def test_service_name_default_only_when_env_sets_none() -> None:
    assert cfg([], {"OTEL_SERVICE_NAME": "edge"}).resource_attributes["service.name"] == "edge"
    attrs = cfg([], {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,host.name=h%2C1"})
    assert attrs.resource_attributes == {"service.name": "from-attrs", "host.name": "h,1"}
    # OTEL_SERVICE_NAME beats service.name in OTEL_RESOURCE_ATTRIBUTES (specification).
    both = {"OTEL_RESOURCE_ATTRIBUTES": "service.name=a", "OTEL_SERVICE_NAME": "b"}
    assert cfg([], both).resource_attributes["service.name"] == "b"


def test_prometheus_host_port() -> None:
    c = cfg(["--exporter", "prometheus"])
    assert (c.prometheus_host, c.prometheus_port) == ("127.0.0.1", 9464)
    assert c.otlp is None
    env = {"OTEL_EXPORTER_PROMETHEUS_HOST": "0.0.0.0", "OTEL_EXPORTER_PROMETHEUS_PORT": "9000"}
    c = cfg(["--exporter", "prometheus"], env)
    assert (c.prometheus_host, c.prometheus_port) == ("0.0.0.0", 9000)
    c = cfg(["--exporter", "prometheus", "--prometheus-port", "9100"], env)
    assert c.prometheus_port == 9100


def test_owner_filter_turns_owner_lookup_on() -> None:
    c = cfg(["--owner", "sshd", "--type", "xdp", "--name", "x*"])
    assert c.owners and c.owner_names == ("sshd",) and c.types == ("xdp",) and c.names == ("x*",)


def test_derived_gauges_flag_reaches_the_metrics_options() -> None:
    from otel_bpf.cli.main import _metrics_options

    assert not cfg([]).derived_gauges and not _metrics_options(cfg([])).derived_gauges
    c = cfg(["--derived-gauges"])
    assert c.derived_gauges and _metrics_options(c).derived_gauges


def test_per_cpu_flag_reaches_the_metrics_options() -> None:
    from otel_bpf.cli.main import _metrics_options

    assert not cfg([]).per_cpu and not _metrics_options(cfg([])).per_cpu
    c = cfg(["--per-cpu"])
    assert c.per_cpu and _metrics_options(c).per_cpu


def test_key_value_parsing() -> None:
    assert parse_key_values("a=1, b = x%20y ,,c=", "V") == {"a": "1", "b": "x y", "c": ""}
    assert parse_headers("Authorization=Bearer%20t,X-Tenant=7", "H") == {
        "authorization": "Bearer t",
        "x-tenant": "7",
    }


INVALID_ENV = [
    ("OTEL_METRICS_EXPORTER", "zipkin", "unknown exporter 'zipkin'"),
    ("OTEL_METRICS_EXPORTER", "none,otlp", "cannot be combined"),
    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "http/json is not supported"),
    ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "udp", "expected grpc or http/protobuf"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4317", "expected a URL"),
    ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://h:99999", "invalid URL"),
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://h:1", "expected a URL"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "novalue", "key=value"),
    ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "bad name=1", "not a valid header name"),
    ("OTEL_EXPORTER_OTLP_HEADERS", "a=x%0Ay", "line break"),
    ("OTEL_EXPORTER_OTLP_INSECURE", "yes", "expected true or false"),
    ("OTEL_EXPORTER_OTLP_METRICS_INSECURE", "1", "expected true or false"),
    ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem", "cannot read file"),
    ("OTEL_EXPORTER_OTLP_METRICS_CLIENT_KEY", "/nonexistent/k.pem", "cannot read file"),
    ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/nonexistent/c.pem", "cannot read file"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon", "expected a number of seconds"),
    ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "-1", "positive number"),
    ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd", "expected gzip or none"),
    ("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "often", "cumulative, delta"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "1s", "milliseconds"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "0", "positive"),
    ("OTEL_METRIC_EXPORT_TIMEOUT", "inf", "positive"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "9e15", "at most 8.64e+07 milliseconds"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "50", "at least 100 milliseconds"),
    ("OTEL_METRIC_EXPORT_TIMEOUT", "9e15", "at most"),
    ("OTEL_METRICS_EXEMPLAR_FILTER", "junk", "expected one of always_on"),
    ("OTEL_RESOURCE_ATTRIBUTES", "team", "key=value"),
    ("OTEL_LOG_LEVEL", "chatty", "expected one of"),
]


@pytest.mark.parametrize(("name", "value", "message"), INVALID_ENV)
def test_invalid_env_is_a_clear_error(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg([], {name: value})
    assert name in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "70000", "0..65535"),
        ("OTEL_EXPORTER_PROMETHEUS_PORT", "metrics", "port number"),
    ],
)
def test_invalid_prometheus_env(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        cfg(["--exporter", "prometheus"], {name: value})
    assert name in str(info.value) and message in str(info.value)


def test_otlp_variables_are_not_read_without_otlp() -> None:
    c = cfg(["--exporter", "console"], {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"})
    assert c.otlp is None


def test_client_key_needs_certificate(tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_text("x")
    with pytest.raises(ConfigError, match="must be set together"):
        cfg([], {"OTEL_EXPORTER_OTLP_CLIENT_KEY": str(key)})


def test_bad_endpoint_flag() -> None:
    with pytest.raises(ConfigError, match="--endpoint: expected a URL"):
        cfg(["--endpoint", "collector:4317"])


def test_http_metrics_path_goes_before_the_query() -> None:
    c = cfg(["--protocol", "http/protobuf", "--endpoint", "http://h:4318/otlp?token=abc"])
    assert c.otlp is not None
    assert c.otlp.endpoint == "http://h:4318/otlp/v1/metrics?token=abc"


def test_attachments_flag_reaches_the_source_options() -> None:
    from otel_bpf.cli.main import _source_options
    from otel_bpf.otel.options import MetricsOptions

    c = cfg(["--json", "--attachments"])
    assert c.attachments and _source_options(c, MetricsOptions()).attachments
    plain = cfg(["--json"])
    assert not plain.attachments and not _source_options(plain, MetricsOptions()).attachments
