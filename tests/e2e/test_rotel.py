"""``bpftop-otel`` exporting to a real OTLP collector (rotel) over gRPC and HTTP/protobuf.

The demo workload drives four real programs; the collector prints every data point it
receives, and the test checks names, units, instrument kinds, attributes and that the
counters grow, as a dashboard would see them.
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict
from pathlib import Path

import pytest
from peers import Cli, DataPoint, Rotel, cli_env, free_port, wait_until

from otel_bpf.demo import PROGRAM_NAMES
from otel_bpf.kernel.prog_types import RECURSION_CHECKED_TYPES
from otel_bpf.otel.names import PER_CPU

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(150)]

# The metrics contract (design notes): name -> (unit, data type, monotonic).
CONTRACT = {
    "bpf.program.run.time": ("s", "Sum", True),
    "bpf.program.runs": ("{run}", "Sum", True),
    "bpf.program.count": ("{program}", "Sum", False),
    "bpf.stats.enabled": ("1", "Gauge", None),
}
# Only for the program types that can miss a run: none of the demo's, so only when such a
# program is loaded on the host.
MISSES = {"bpf.program.recursion.misses": ("{miss}", "Sum", True)}
DERIVED_GAUGES = {
    "bpf.program.run.time.average": ("s", "Gauge", None),
    "bpf.program.run.rate": ("{run}/s", "Gauge", None),
    "bpf.program.cpu.utilization": ("1", "Gauge", None),
}
DEMO_TYPES = {
    "otel_demo_sock": "socket_filter",
    "otel_demo_xdp": "xdp",
    "otel_demo_cgskb": "cgroup_skb",
    "otel_demo_slow": "socket_filter",
}


def runs_by_series(points: list[DataPoint]) -> dict[tuple[str, str], list[DataPoint]]:
    """``bpf.program.runs`` points of the demo programs, keyed by (name, id)."""
    series: dict[tuple[str, str], list[DataPoint]] = defaultdict(list)
    for p in points:
        name = p.attributes.get("bpf.program.name", "")
        if p.metric == "bpf.program.runs" and name in PROGRAM_NAMES:
            series[(name, p.attributes.get("bpf.program.id", ""))].append(p)
    return series


def grown(points: list[DataPoint]) -> bool:
    """Every demo program has a series with at least three increasing exports."""
    names = set()
    for (name, _id), pts in runs_by_series(points).items():
        values = [p.value for p in sorted(pts, key=lambda p: p.time_ns)]
        if len(values) >= 3 and values[-1] > values[0]:
            names.add(name)
    return names == set(PROGRAM_NAMES)


@pytest.mark.parametrize(
    ("protocol", "via"),
    [("grpc", "flags"), ("http/protobuf", "flags"), ("grpc", "env"), ("http/protobuf", "env")],
)
def test_exports_the_metrics_contract_to_rotel(tmp_path: Path, protocol: str, via: str) -> None:
    """Configured by flags, or only by the standard OTEL_* variables."""
    with Rotel(tmp_path / "rotel") as rotel:
        endpoint = rotel.grpc_url if protocol == "grpc" else rotel.http_url
        args = ["--demo", "--interval", "0.5"]
        env = cli_env(OTEL_RESOURCE_ATTRIBUTES="deployment.environment=e2e")
        if via == "flags":
            args += ["--export-interval", "1", "--protocol", protocol, "--endpoint", endpoint]
            args += ["--derived-gauges"]
        else:
            env.update(
                OTEL_METRICS_EXPORTER="otlp",
                OTEL_METRIC_EXPORT_INTERVAL="1000",
                OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
                OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            )
        with Cli(tmp_path, args, env) as cli:
            points = rotel.wait_points(grown, 60, "growing bpf.program.runs for every demo program")
            cli.signal(signal.SIGTERM)
            status = cli.wait(30)
        assert status == 0, cli.describe()

    received = {p.metric for p in points}
    assert set(CONTRACT) <= received, f"missing {set(CONTRACT) - received}"
    # The period gauges only with --derived-gauges (given with the flags variants).
    if via == "flags":
        assert set(DERIVED_GAUGES) <= received, f"missing {set(DERIVED_GAUGES) - received}"
    else:
        assert not set(DERIVED_GAUGES) & received
    # No per-CPU series without --per-cpu.
    assert not received & {m.name for m in PER_CPU}
    assert not [p for p in points if "cpu.logical_number" in p.attributes]
    contract = CONTRACT | MISSES | DERIVED_GAUGES
    for p in points:
        if p.metric in contract:
            unit, data_type, monotonic = contract[p.metric]
            assert (p.unit, p.data_type, p.monotonic) == (unit, data_type, monotonic), p
        if p.metric in MISSES:
            assert p.attributes["bpf.program.type"] in RECURSION_CHECKED_TYPES, p

    assert points[0].resource["service.name"] == "bpftop-otel"
    assert points[0].resource["deployment.environment"] == "e2e"
    # The default path, auto, takes the iterator on this kernel (CI runs the same one).
    assert points[0].resource["bpf.sampling.path"] == "iterator"

    # Attributes of the demo series: id, name, type as bpftool names them.
    series = runs_by_series(points)
    for (name, prog_id), pts in series.items():
        assert prog_id.isdigit(), pts[0].attributes
        assert pts[0].attributes["bpf.program.type"] == DEMO_TYPES[name]
    # Counters are cumulative: never go down within a series.
    for pts in series.values():
        values = [p.value for p in sorted(pts, key=lambda p: p.time_ns)]
        assert values == sorted(values)

    run_time = [
        p
        for p in points
        if p.metric == "bpf.program.run.time"
        and p.attributes.get("bpf.program.name") in PROGRAM_NAMES
    ]
    assert run_time and max(p.value for p in run_time) > 0
    stats = [p.value for p in points if p.metric == "bpf.stats.enabled"]
    assert stats and stats[-1] == 1
    err = cli.stderr()
    assert "Traceback" not in err
    assert not [line for line in err.splitlines() if " WARNING " in line], err


def test_collector_unreachable_then_back(tmp_path: Path) -> None:
    """Sampling goes on while the collector is down; one line per failure burst, no
    traceback; when a collector appears on the port, export resumes with one line."""
    rotel = Rotel(tmp_path / "rotel")
    args = [
        "--demo",
        "--json",
        "--interval",
        "0.5",
        "--export-interval",
        "0.5",
        "--endpoint",
        rotel.grpc_url,
        "--name",
        "otel_demo_*",
    ]
    env = cli_env(OTEL_EXPORTER_OTLP_TIMEOUT="1")
    with Cli(tmp_path, args, env) as cli:

        def failure_lines() -> list[str]:
            return [x for x in cli.stderr().splitlines() if " WARNING " in x and "export to" in x]

        assert wait_until(failure_lines, 30), f"no failure line\n{cli.describe()}"
        seq_at_failure = max(o["seq"] for o in cli.json_objects())
        # Several more export intervals with the collector still down.
        time.sleep(4)
        assert max(o["seq"] for o in cli.json_objects()) >= seq_at_failure + 5, cli.describe()
        assert len(failure_lines()) == 1, cli.describe()

        with rotel:
            rotel.wait_points(
                lambda pts: any(p.metric == "bpf.stats.enabled" for p in pts),
                60,
                "metrics after the collector came back",
            )
            resumed = wait_until(
                lambda: [x for x in cli.stderr().splitlines() if "resumed" in x], 10
            )
            assert resumed and len(resumed) == 1, cli.describe()
            cli.signal(signal.SIGTERM)
            assert cli.wait(30) == 0, cli.describe()
    err = cli.stderr()
    assert "Traceback" not in err
    assert len(failure_lines()) == 1, err
    # Nothing else from the exporter's retry loop reached stderr.
    assert "Transient error" not in err and "UNAVAILABLE" not in err.replace(failure_lines()[0], "")


def test_attribute_set_and_filters_reach_the_exporter(tmp_path: Path) -> None:
    """``--attributes by-name-type --type socket_filter --name 'otel_demo_*'``: only the two
    demo socket filters are exported, keyed by name and type, without ``bpf.program.id``."""
    with Rotel(tmp_path / "rotel") as rotel:
        args = [
            "--demo",
            "--interval",
            "0.5",
            "--export-interval",
            "1",
            "--endpoint",
            rotel.grpc_url,
            "--attributes",
            "by-name-type",
            "--type",
            "socket_filter",
            "--name",
            "otel_demo_*",
        ]
        with Cli(tmp_path, args, cli_env()) as cli:

            def two_exports(pts: list[DataPoint]) -> bool:
                return len({p.time_ns for p in pts if p.metric == "bpf.program.runs"}) >= 2

            points = rotel.wait_points(two_exports, 60, "two exports of bpf.program.runs")
            cli.signal(signal.SIGTERM)
            assert cli.wait(30) == 0, cli.describe()
    runs = [p for p in points if p.metric == "bpf.program.runs"]
    assert {p.attributes["bpf.program.name"] for p in runs} == {"otel_demo_sock", "otel_demo_slow"}
    assert all(p.attributes["bpf.program.type"] == "socket_filter" for p in runs)
    assert not [p for p in points if "bpf.program.id" in p.attributes]


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.mark.timeout(120)
def test_memory_stays_bounded_while_the_collector_is_down(tmp_path: Path) -> None:
    """Exports every 0.2 s to a port nobody listens on, with sampling every 0.1 s: failed
    batches are dropped, not queued, so the resident size stops growing after warm-up."""
    args = [
        "--demo",
        "--interval",
        "0.1",
        "--export-interval",
        "0.2",
        "--endpoint",
        f"http://127.0.0.1:{free_port()}",
    ]
    with Cli(tmp_path, args, cli_env(OTEL_EXPORTER_OTLP_TIMEOUT="1")) as cli:
        assert wait_until(lambda: " WARNING " in cli.stderr(), 30), cli.describe()
        # Warm-up: the error paths of the first failed exports (a headless run keeps only a
        # few snapshots, so no history is still filling up after this).
        time.sleep(4)
        samples = []
        for _ in range(9):
            samples.append(_rss_kib(cli.pid))
            time.sleep(1.5)
        cli.signal(signal.SIGTERM)
        assert cli.wait(30) == 0, cli.describe()
    warm, last = samples[0], samples[-1]
    # Linear growth from queued batches would add several MiB over these 13.5 s (an export
    # every 0.2 s, each refused or ended by its 1 s timeout, of four programs' points);
    # allocator noise stays well below 10 %.
    assert last - warm < warm * 0.10, f"RSS grew from {warm} KiB to {last} KiB: {samples}"
    assert "Traceback" not in cli.stderr()
