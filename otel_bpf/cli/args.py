"""Command-line parsing for ``bpftop-otel``: every option validated, errors exit with code 2.

Options whose default comes from the environment parse to ``None`` when absent, so that
``config.resolve`` can tell "not given" from "given" (flags win over ``OTEL_*`` variables).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence

from otel_bpf import __version__

PROG = "bpftop-otel"

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_NOPERM = 77
"""``EX_NOPERM`` from sysexits.h: the process lacks the privileges BPF needs."""

INTERVAL_MIN = 0.1
INTERVAL_MAX = 3600.0
EXPORT_INTERVAL_MIN = 0.1
EXPORT_INTERVAL_MAX = 86400.0

EXPORTER_NAMES = ("otlp", "console", "prometheus", "none")
PROTOCOLS = ("grpc", "http/protobuf")
ATTRIBUTE_SETS = ("per-program", "by-name-type")
LOG_LEVELS = ("debug", "info", "warning", "error")
SAMPLING_PATHS = ("syscall", "iterator", "auto")

EPILOG = """\
exit status:
  0   normal end (--count reached, SIGTERM, SIGINT, or q in the live view)
  1   runtime error (kernel error, exporter could not start, ...)
  2   usage error: an invalid option or OTEL_* environment variable
  77  missing privileges (needs CAP_BPF and CAP_SYS_ADMIN, or root)

environment (flags win over the environment):
  OTEL_METRICS_EXPORTER                 otlp | console | prometheus | none, comma list
  OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT collector URL
  OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL grpc | http/protobuf
  OTEL_EXPORTER_OTLP_[METRICS_]HEADERS  key=value,... (values URL-encoded)
  OTEL_EXPORTER_OTLP_[METRICS_]INSECURE true | false (gRPC without TLS)
  OTEL_EXPORTER_OTLP_[METRICS_]CERTIFICATE, _CLIENT_KEY, _CLIENT_CERTIFICATE  PEM files
  OTEL_EXPORTER_OTLP_[METRICS_]TIMEOUT  export request timeout, seconds (as the
                                        OpenTelemetry Python SDK reads it; default 10,
                                        or the export interval if shorter, at least 1)
  OTEL_EXPORTER_OTLP_[METRICS_]COMPRESSION  gzip | none
  OTEL_METRIC_EXPORT_INTERVAL           milliseconds between exports (default 60000)
  OTEL_METRIC_EXPORT_TIMEOUT            milliseconds for one export (default 30000)
  OTEL_EXPORTER_PROMETHEUS_HOST, _PORT  Prometheus endpoint (default 127.0.0.1:9464)
  OTEL_RESOURCE_ATTRIBUTES              key=value,... resource attributes
  OTEL_SERVICE_NAME                     service.name (default bpftop-otel)
  OTEL_LOG_LEVEL                        debug | info | warning | error

Stats (BPF_ENABLE_STATS) are switched on while bpftop-otel runs and off when it exits.
A headless run that exports also releases them after three export intervals without a
collection (a Prometheus endpoint nobody scrapes) and takes them again at the next one.
"""


def _float_in(lo: float, hi: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, got {text!r}") from None
        if not math.isfinite(value) or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(
                f"{what} must be between {lo:g} and {hi:g} seconds, got {text!r}"
            )
        return value

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


def port_number(text: str) -> int:
    """A TCP port 0..65535 (0 lets the kernel choose)."""
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0..65535, got {text!r}")
    return value


def exporter_list(text: str) -> tuple[str, ...]:
    """``otlp``, ``console``, ``prometheus`` or ``none``; a comma list of the first three."""
    names = tuple(part.strip().lower() for part in text.split(","))
    if not names or any(not n for n in names):
        raise argparse.ArgumentTypeError(f"empty exporter name in {text!r}")
    unknown = [n for n in names if n not in EXPORTER_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown exporter {unknown[0]!r} (choose from {', '.join(EXPORTER_NAMES)})"
        )
    if "none" in names and len(names) > 1:
        raise argparse.ArgumentTypeError("'none' cannot be combined with other exporters")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"exporter listed twice in {text!r}")
    return () if names == ("none",) else names


def _non_empty(what: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{what} must not be empty")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise argparse.ArgumentTypeError(f"{what} must not contain control characters")
        return text

    return parse


class _Parser(argparse.ArgumentParser):
    """argparse with one message format: ``bpftop-otel: error: ...`` and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, no usage block: the message names the option, --help has the rest.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``bpftop-otel`` argument parser (its --help is the command's reference)."""
    p = _Parser(
        prog=PROG,
        description=(
            "Measure what every eBPF program on this host costs (average runtime, runs/s,\n"
            "CPU) and export it as OpenTelemetry metrics. Headless by default: samples\n"
            "every --interval and exports with the configured exporter."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")

    mode = p.add_argument_group("what to run")
    mode.add_argument(
        "--live",
        action="store_true",
        help="top-like live view in the terminal; exports as well only when an exporter is "
        "chosen by --exporter or OTEL_METRICS_EXPORTER (default: off)",
    )
    mode.add_argument(
        "--json",
        action="store_true",
        help="write one JSON object per program per tick to stdout (JSON Lines, schema in "
        "the documentation's Command line page) (default: off)",
    )
    mode.add_argument(
        "--count",
        type=_positive_int,
        metavar="N",
        help="stop after N sampling ticks and exit 0 (default: run until SIGTERM/SIGINT)",
    )
    mode.add_argument(
        "--interval",
        type=_float_in(INTERVAL_MIN, INTERVAL_MAX, "--interval"),
        default=1.0,
        metavar="S",
        help=f"seconds between sampling passes, {INTERVAL_MIN:g}..{INTERVAL_MAX:g} (default: 1)",
    )
    mode.add_argument(
        "--demo",
        action="store_true",
        help="run the demo workload (real BPF programs named otel_demo_*, driven by "
        "loopback traffic) alongside; removed on exit (default: off)",
    )
    mode.add_argument(
        "--ascii",
        action="store_true",
        default=None,
        help="live view: ASCII only, no Unicode graph glyphs (default: auto-detect)",
    )
    mode.add_argument(
        "--sampling-path",
        choices=SAMPLING_PATHS,
        default="auto",
        help="how programs are read: syscall (bpf(2) per program, works everywhere), "
        "iterator (one BPF iterator read for all programs), or auto: the iterator once it "
        "agrees with the syscall path at start-up, else syscall (default: auto)",
    )
    mode.add_argument(
        "--per-cpu",
        action="store_true",
        help="read each program's counters on every possible CPU (the `per_cpu` key of "
        "--json, and the bpf.program.cpu.* counters with cpu.logical_number when exporting: "
        "one series per program per CPU); needs the iterator sampling path (default: off)",
    )
    mode.add_argument(
        "--owners",
        action="store_true",
        help="look up which processes hold each program (reads /proc; default: off)",
    )
    mode.add_argument(
        "--attachments",
        action="store_true",
        help="look up where each program is attached, from the BPF links, BPF_PROG_QUERY "
        "(cgroups, network namespaces, sockmaps), processes' perf events and sockets (the "
        "`attachments` key of --json; re-read every 10 s or when programs come or go; "
        "default: off; --live always looks them up)",
    )

    exp = p.add_argument_group("export")
    exp.add_argument(
        "--exporter",
        type=exporter_list,
        metavar="{otlp,console,prometheus,none}",
        help="where metrics go; a comma list is allowed (env OTEL_METRICS_EXPORTER; "
        "default: otlp, or with --live or --json none unless --endpoint or --protocol is given)",
    )
    exp.add_argument(
        "--endpoint",
        type=_non_empty("--endpoint"),
        metavar="URL",
        help="OTLP collector URL; for http/protobuf, /v1/metrics is appended unless present "
        "(env OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT; default: "
        "http://localhost:4317 for grpc, http://localhost:4318/v1/metrics for http/protobuf)",
    )
    exp.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="OTLP transport (env OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, "
        "OTEL_EXPORTER_OTLP_PROTOCOL; default: grpc)",
    )
    exp.add_argument(
        "--export-interval",
        type=_float_in(EXPORT_INTERVAL_MIN, EXPORT_INTERVAL_MAX, "--export-interval"),
        metavar="S",
        help="seconds between exports (env OTEL_METRIC_EXPORT_INTERVAL in milliseconds; "
        "default: 60)",
    )
    exp.add_argument(
        "--prometheus-host",
        type=_non_empty("--prometheus-host"),
        metavar="HOST",
        help="address of the Prometheus scrape endpoint (env OTEL_EXPORTER_PROMETHEUS_HOST; "
        "default: 127.0.0.1)",
    )
    exp.add_argument(
        "--prometheus-port",
        type=port_number,
        metavar="PORT",
        help="port of the Prometheus scrape endpoint (env OTEL_EXPORTER_PROMETHEUS_PORT; "
        "default: 9464)",
    )

    sel = p.add_argument_group("metric attributes and filters")
    sel.add_argument(
        "--attributes",
        choices=ATTRIBUTE_SETS,
        default="per-program",
        help="per-program: one series per program id; by-name-type: aggregate programs by "
        "name and type, without bpf.program.id (default: per-program)",
    )
    sel.add_argument(
        "--derived-gauges",
        action="store_true",
        help="also export bpf.program.run.time.average, bpf.program.run.rate and "
        "bpf.program.cpu.utilization, figures over the last sampling period that a backend "
        "can derive from the counters with rate() (default: off)",
    )
    sel.add_argument(
        "--owner-series",
        action="store_true",
        help="also export bpf.program.owner: 1 for each process holding a program, with "
        "process.pid, process.executable.name, and container.id and k8s.pod.uid when its "
        "cgroup names them; implies --owners (default: off)",
    )
    sel.add_argument(
        "--attachment-series",
        action="store_true",
        help="also export bpf.program.attachment: 1 for each place a program is attached "
        "to, with bpf.attach.kind, bpf.attach.type, bpf.attach.target, bpf.attach.via, and "
        "network.interface.name, container.id and k8s.pod.uid where they apply; implies "
        "--attachments (default: off)",
    )
    sel.add_argument(
        "--type",
        dest="types",
        action="append",
        type=_non_empty("--type"),
        metavar="TYPE",
        help="only programs of this type (bpftool's name, e.g. xdp), for the exporters and "
        "--json; repeatable "
        "(default: all)",
    )
    sel.add_argument(
        "--name",
        dest="names",
        action="append",
        type=_non_empty("--name"),
        metavar="PATTERN",
        help="only programs whose name matches this shell pattern (e.g. 'cil_*'), "
        "or this regular expression with a re: prefix; repeatable (default: all)",
    )
    sel.add_argument(
        "--owner",
        dest="owner_names",
        action="append",
        type=_non_empty("--owner"),
        metavar="COMM",
        help="only programs held by a process with this name; implies --owners; "
        "repeatable (default: all)",
    )

    p.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        help="log verbosity on stderr (env OTEL_LOG_LEVEL; default: info)",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate ``argv``; on a usage error print it and exit with status 2."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    if ns.live and ns.json:
        parser.error("--json cannot be combined with --live (both write to the terminal)")
    if ns.per_cpu and ns.sampling_path == "syscall":
        parser.error(
            "--per-cpu needs --sampling-path iterator or auto: only the iterator path "
            "(iter/bpf_prog) sees per-CPU counters, the syscall path reads totals"
        )
    return ns
