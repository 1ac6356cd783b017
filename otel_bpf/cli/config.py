"""Resolve the command line and the ``OTEL_*`` environment into one validated ``Config``.

Precedence: a flag, then the metrics-specific variable (``OTEL_EXPORTER_OTLP_METRICS_*``),
then the generic one (``OTEL_EXPORTER_OTLP_*``), then the default.  An empty variable counts
as unset (as the OpenTelemetry specification says).  Every value we read is validated here,
so a typo becomes one clear message instead of an SDK warning or a traceback later.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit, urlunsplit

from otel_bpf.cli import args as cli_args

DEFAULT_SERVICE_NAME = "bpftop-otel"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
HTTP_METRICS_PATH = "/v1/metrics"
DEFAULT_OTLP_TIMEOUT_S = 10.0
DEFAULT_EXPORT_INTERVAL_S = 60.0
DEFAULT_EXPORT_TIMEOUT_S = 30.0
DEFAULT_PROMETHEUS_HOST = "127.0.0.1"
DEFAULT_PROMETHEUS_PORT = 9464
REPLY_MAX_BYTES = 64 * 1024
"""The most read of one reply from a collector (an error message fits many times)."""

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class ConfigError(ValueError):
    """An invalid flag combination or environment value; the message is for the user."""


@dataclass(frozen=True, slots=True)
class OtlpSettings:
    """Everything the OTLP metric exporter is built from."""

    endpoint: str
    """Full URL: for http/protobuf including the ``/v1/metrics`` path."""
    protocol: str
    """``grpc`` or ``http/protobuf``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    insecure: bool = True
    """gRPC only: plaintext instead of TLS."""
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None
    timeout: float = DEFAULT_OTLP_TIMEOUT_S
    """Seconds per export request."""
    compression: str | None = None
    """``gzip``, ``none`` or None for the exporter's default."""


@dataclass(frozen=True, slots=True)
class Config:
    """The validated settings of one ``bpftop-otel`` run."""

    interval: float
    count: int | None
    live: bool
    json: bool
    demo: bool
    ascii: bool | None
    owners: bool
    sampling_path: str
    """``auto``, ``iterator`` or ``syscall`` (see ``otel_bpf.kernel.iterator.selfcheck``)."""
    exporters: tuple[str, ...]
    """Subset of ``otlp``, ``console``, ``prometheus``; empty means no exporter."""
    otlp: OtlpSettings | None
    """None unless ``otlp`` is among the exporters."""
    export_interval: float
    export_timeout: float
    prometheus_host: str
    prometheus_port: int
    attributes: str
    types: tuple[str, ...]
    names: tuple[str, ...]
    owner_names: tuple[str, ...]
    log_level: str
    resource_attributes: Mapping[str, str]
    """``OTEL_RESOURCE_ATTRIBUTES`` plus ``service.name``."""
    exemplar_filter: str | None = None
    """``always_on``, ``always_off`` or ``trace_based`` from OTEL_METRICS_EXEMPLAR_FILTER;
    None: no exemplars (observable instruments have none to give)."""
    derived_gauges: bool = False
    """``--derived-gauges``: export the period gauges besides the counters."""
    per_cpu: bool = False
    """``--per-cpu``: read per-CPU counters (the iterator path only), for ``--json`` and the
    exported per-CPU counters."""
    attachments: bool = False
    """``--attachments``: look up where each program is attached (the ``attachments`` key of
    ``--json``); also on with ``--attachment-series``.  The live view looks them up
    whatever this says."""
    owner_series: bool = False
    """``--owner-series``: export ``bpf.program.owner``."""
    attachment_series: bool = False
    """``--attachment-series``: export ``bpf.program.attachment``."""


def _env(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    """The first of ``names`` that is set to a non-empty value, as (name, value)."""
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def _otlp_env(environ: Mapping[str, str], suffix: str) -> tuple[str, str] | None:
    return _env(environ, f"OTEL_EXPORTER_OTLP_METRICS_{suffix}", f"OTEL_EXPORTER_OTLP_{suffix}")


def parse_key_values(text: str, what: str) -> dict[str, str]:
    """``k=v,k2=v2`` with URL-encoded values (W3C baggage style, as OTEL_* lists are)."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = unquote(key.strip())
        if not sep or not key:
            raise ConfigError(f"{what}: expected key=value pairs separated by commas, got {item!r}")
        out[key] = unquote(value.strip())
    return out


def parse_headers(text: str, what: str) -> dict[str, str]:
    """OTLP headers: ``name=value`` pairs; names must be HTTP tokens, values single-line."""
    headers = parse_key_values(text, what)
    for name, value in headers.items():
        if not _HEADER_NAME.match(name):
            raise ConfigError(f"{what}: {name!r} is not a valid header name")
        if any(c in value for c in "\r\n\0"):
            raise ConfigError(f"{what}: the value of {name!r} contains a line break")
    return {k.lower(): v for k, v in headers.items()}


def parse_bool(text: str, what: str) -> bool:
    """``true`` or ``false`` (any case), as the specification defines boolean variables."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    raise ConfigError(f"{what}: expected true or false, got {text!r}")


EXEMPLAR_FILTERS = ("always_on", "always_off", "trace_based")


def parse_positive(text: str, what: str, unit: str, maximum: float = math.inf) -> float:
    """A finite number > 0, at most ``maximum``."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{what}: expected a number of {unit}, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{what}: expected a positive number of {unit}, got {text!r}")
    if value > maximum:
        raise ConfigError(f"{what}: at most {maximum:g} {unit}, got {text!r}")
    return value


def validate_url(url: str, what: str) -> str:
    """An ``http://`` or ``https://`` URL with a host and a valid port."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{what}: invalid URL {url!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}: expected a URL such as http://localhost:4317, got {url!r}")
    if port == 0:
        raise ConfigError(f"{what}: port 0 is not a valid collector port in {url!r}")
    return url


def _readable_file(path: str, what: str) -> str:
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise ConfigError(f"{what}: cannot read file {path!r}")
    return path


def _with_metrics_path(url: str) -> str:
    """The generic OTLP/HTTP endpoint is a base URL: the signal path is appended to its
    path (before any query string)."""
    parts = urlsplit(url)
    if parts.path.rstrip("/").endswith(HTTP_METRICS_PATH):
        return url
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + HTTP_METRICS_PATH))


def redact_url(url: str) -> str:
    """``url`` fit for a log line: credentials (``user:password@``) replaced by ``***@``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def resolve_otlp(
    ns: argparse.Namespace, environ: Mapping[str, str], export_interval: float
) -> OtlpSettings:
    """The OTLP exporter settings from flags and ``OTEL_EXPORTER_OTLP_*``."""
    if ns.protocol is not None:
        protocol = ns.protocol
    elif (found := _otlp_env(environ, "PROTOCOL")) is not None:
        name, protocol = found
        if protocol not in cli_args.PROTOCOLS:
            hint = " (http/json is not supported)" if protocol == "http/json" else ""
            raise ConfigError(f"{name}: expected grpc or http/protobuf, got {protocol!r}{hint}")
    else:
        protocol = "grpc"
    http = protocol == "http/protobuf"

    source = "--endpoint"
    if ns.endpoint is not None:
        endpoint = validate_url(ns.endpoint.strip(), "--endpoint")
        if http:
            endpoint = _with_metrics_path(endpoint)
    elif (found := _env(environ, "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")) is not None:
        # The signal-specific variable is used as given (specification).
        source = found[0]
        endpoint = validate_url(found[1], found[0])
    elif (found := _env(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")) is not None:
        source = found[0]
        endpoint = validate_url(found[1], found[0])
        if http:
            endpoint = _with_metrics_path(endpoint)
    else:
        endpoint = DEFAULT_HTTP_ENDPOINT + HTTP_METRICS_PATH if http else DEFAULT_GRPC_ENDPOINT
    if not http and "@" in urlsplit(endpoint).netloc:
        # gRPC takes no credentials from the URL: they would end up in its target name, fail
        # name resolution and be echoed in every error it reports.
        raise ConfigError(
            f"{source}: a gRPC endpoint cannot carry credentials (user:password@); send them "
            "as a header instead, e.g. OTEL_EXPORTER_OTLP_HEADERS=authorization=Basic%20<base64>"
        )

    headers: dict[str, str] = {}
    if (found := _otlp_env(environ, "HEADERS")) is not None:
        headers = parse_headers(found[1], found[0])

    scheme = urlsplit(endpoint).scheme
    insecure = scheme == "http"
    if (found := _otlp_env(environ, "INSECURE")) is not None:
        insecure = parse_bool(found[1], found[0]) and scheme != "https"

    files: dict[str, str | None] = {}
    for suffix in ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE"):
        found = _otlp_env(environ, suffix)
        files[suffix] = _readable_file(found[1], found[0]) if found else None
    if (files["CLIENT_KEY"] is None) != (files["CLIENT_CERTIFICATE"] is None):
        raise ConfigError(
            "OTEL_EXPORTER_OTLP_CLIENT_KEY and OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE "
            "(or their METRICS_ forms) must be set together"
        )

    # Without a setting, an export may not outlast the export interval (down to 1 s):
    # a collector that is down would otherwise stall collection for the whole retry time.
    timeout = min(DEFAULT_OTLP_TIMEOUT_S, max(1.0, export_interval))
    if (found := _otlp_env(environ, "TIMEOUT")) is not None:
        timeout = parse_positive(found[1], found[0], "seconds")

    compression = None
    if (found := _otlp_env(environ, "COMPRESSION")) is not None:
        compression = found[1].lower()
        if compression not in ("gzip", "none"):
            raise ConfigError(f"{found[0]}: expected gzip or none, got {found[1]!r}")

    found = _env(environ, "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
    if found is not None and found[1].lower() not in ("cumulative", "delta", "lowmemory"):
        raise ConfigError(f"{found[0]}: expected cumulative, delta or lowmemory, got {found[1]!r}")

    return OtlpSettings(
        endpoint=endpoint,
        protocol=protocol,
        headers=headers,
        insecure=insecure,
        certificate=files["CERTIFICATE"],
        client_key=files["CLIENT_KEY"],
        client_certificate=files["CLIENT_CERTIFICATE"],
        timeout=timeout,
        compression=compression,
    )


def _exporters(ns: argparse.Namespace, environ: Mapping[str, str]) -> tuple[str, ...]:
    if ns.exporter is not None:
        return tuple(ns.exporter)
    found = _env(environ, "OTEL_METRICS_EXPORTER")
    if found is not None:
        try:
            return cli_args.exporter_list(found[1])
        except argparse.ArgumentTypeError as exc:
            raise ConfigError(f"{found[0]}: {exc}") from None
    # The live view and JSON Lines are terminal tools: there, OTLP is exported only when
    # asked for (an exporter, or where to send it).
    asked = ns.endpoint is not None or ns.protocol is not None
    return () if (ns.live or ns.json) and not asked else ("otlp",)


def _resource_attributes(environ: Mapping[str, str]) -> dict[str, str]:
    attrs: dict[str, str] = {}
    if (found := _env(environ, "OTEL_RESOURCE_ATTRIBUTES")) is not None:
        attrs = parse_key_values(found[1], found[0])
    if (found := _env(environ, "OTEL_SERVICE_NAME")) is not None:
        attrs["service.name"] = found[1]
    attrs.setdefault("service.name", DEFAULT_SERVICE_NAME)
    return attrs


def _log_level(ns: argparse.Namespace, environ: Mapping[str, str]) -> str:
    if ns.log_level is not None:
        return str(ns.log_level)
    found = _env(environ, "OTEL_LOG_LEVEL")
    if found is None:
        return "info"
    level = {"warn": "warning"}.get(found[1].lower(), found[1].lower())
    if level not in cli_args.LOG_LEVELS:
        raise ConfigError(
            f"{found[0]}: expected one of {', '.join(cli_args.LOG_LEVELS)}, got {found[1]!r}"
        )
    return level


def resolve(ns: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Merge parsed flags with the environment; raise ``ConfigError`` on any invalid value."""
    env = os.environ if environ is None else environ
    exporters = _exporters(ns, env)

    export_interval = DEFAULT_EXPORT_INTERVAL_S
    if ns.export_interval is not None:
        export_interval = float(ns.export_interval)
    elif (found := _env(env, "OTEL_METRIC_EXPORT_INTERVAL")) is not None:
        # The same bounds as --export-interval (the SDK's timer overflows on huge ones).
        millis = parse_positive(
            found[1], found[0], "milliseconds", cli_args.EXPORT_INTERVAL_MAX * 1000.0
        )
        if millis < cli_args.EXPORT_INTERVAL_MIN * 1000.0:
            raise ConfigError(
                f"{found[0]}: at least {cli_args.EXPORT_INTERVAL_MIN * 1000:g} milliseconds, "
                f"got {found[1]!r}"
            )
        export_interval = millis / 1000.0
    export_timeout = DEFAULT_EXPORT_TIMEOUT_S
    if (found := _env(env, "OTEL_METRIC_EXPORT_TIMEOUT")) is not None:
        millis = parse_positive(
            found[1], found[0], "milliseconds", cli_args.EXPORT_INTERVAL_MAX * 1000.0
        )
        export_timeout = millis / 1000.0
    exemplar_filter = None
    if (found := _env(env, "OTEL_METRICS_EXEMPLAR_FILTER")) is not None:
        exemplar_filter = found[1].lower()
        if exemplar_filter not in EXEMPLAR_FILTERS:
            raise ConfigError(
                f"{found[0]}: expected one of {', '.join(EXEMPLAR_FILTERS)}, got {found[1]!r}"
            )

    host, port = DEFAULT_PROMETHEUS_HOST, DEFAULT_PROMETHEUS_PORT
    if "prometheus" in exporters:
        if ns.prometheus_host is not None:
            host = ns.prometheus_host
        elif (found := _env(env, "OTEL_EXPORTER_PROMETHEUS_HOST")) is not None:
            host = found[1]
        if ns.prometheus_port is not None:
            port = ns.prometheus_port
        elif (found := _env(env, "OTEL_EXPORTER_PROMETHEUS_PORT")) is not None:
            try:
                port = cli_args.port_number(found[1])
            except argparse.ArgumentTypeError as exc:
                raise ConfigError(f"{found[0]}: {exc}") from None

    owner_names = tuple(ns.owner_names or ())
    return Config(
        interval=float(ns.interval),
        count=ns.count,
        live=bool(ns.live),
        json=bool(ns.json),
        demo=bool(ns.demo),
        ascii=ns.ascii,
        owners=bool(ns.owners) or bool(owner_names),
        sampling_path=str(ns.sampling_path),
        exporters=exporters,
        otlp=resolve_otlp(ns, env, export_interval) if "otlp" in exporters else None,
        export_interval=export_interval,
        export_timeout=export_timeout,
        prometheus_host=host,
        prometheus_port=port,
        attributes=str(ns.attributes),
        types=tuple(ns.types or ()),
        names=tuple(ns.names or ()),
        owner_names=owner_names,
        log_level=_log_level(ns, env),
        resource_attributes=_resource_attributes(env),
        exemplar_filter=exemplar_filter,
        derived_gauges=bool(ns.derived_gauges),
        per_cpu=bool(ns.per_cpu),
        # The series is made of the attach points: it needs them looked up, as --owner
        # needs the owners.
        attachments=bool(ns.attachments) or bool(ns.attachment_series),
        owner_series=bool(ns.owner_series),
        attachment_series=bool(ns.attachment_series),
    )
