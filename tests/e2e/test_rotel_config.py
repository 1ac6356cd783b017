"""collector-config/rotel/*.env run for real: bpftop-otel -> rotel agent -> rotel debug sink.

The agent runs ``rotel/agent.env`` as a user would (``set -a; . agent.env; rotel-agent
start``), and forwards to a second rotel that runs ``rotel/debug.env``, whose debug log is
what the test reads. Only addresses are changed from the files: free loopback ports for the
receivers, the sink's address as the agent's gateway, and pid/log files in the test's
directory. Every other variable (receivers disabled, exporter, protocol, compression,
batching) is the file's own.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from peers import (
    Cli,
    DataPoint,
    cli_env,
    free_port,
    parse_debug_metrics,
    rotel_agent,
    stop_process,
    tail,
    wait_for_port,
    wait_until,
)

from otel_bpf.demo import PROGRAM_NAMES
from otel_bpf.otel import names

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

ROTEL_DIR = Path(__file__).resolve().parents[2] / "collector-config" / "rotel"


def env_file(path: Path) -> dict[str, str]:
    """KEY=value lines, as ``set -a; . file`` and systemd's EnvironmentFile read them."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


@contextmanager
def rotel_with(
    config: str, workdir: Path, overrides: dict[str, str]
) -> Iterator[tuple[dict[str, str], Path]]:
    """rotel-agent started with ``config``'s variables plus ``overrides``; yields (env, out)."""
    grpc_port, http_port = free_port(), free_port()
    settings = env_file(ROTEL_DIR / config)
    changed = {
        "ROTEL_OTLP_GRPC_ENDPOINT": f"127.0.0.1:{grpc_port}",
        "ROTEL_OTLP_HTTP_ENDPOINT": f"127.0.0.1:{http_port}",
        "ROTEL_PID_FILE": str(workdir / f"{config}.pid"),
        "ROTEL_LOG_FILE": str(workdir / f"{config}.log"),
        **overrides,
    }
    assert set(changed) - {"ROTEL_PID_FILE", "ROTEL_LOG_FILE"} <= set(settings), (
        f"{config} no longer sets {set(changed) - set(settings)}"
    )
    settings.update(changed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROTEL_")}
    env.update(settings)
    out = workdir / f"{config}.out"
    with open(out, "ab") as sink:
        proc = subprocess.Popen(
            [rotel_agent(), "start"], env=env, stdout=sink, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        if not (wait_for_port(grpc_port, 20, proc) and wait_for_port(http_port, 20, proc)):
            pytest.fail(f"rotel with {config} did not start listening:\n{tail(out)}")
        yield settings, out
    finally:
        stop_process(proc)


def received(out: Path) -> list[DataPoint]:
    text = out.read_text(errors="replace")
    return parse_debug_metrics(text[: text.rfind("\n") + 1])


def demo_runs(points: list[DataPoint]) -> dict[tuple[str, str], list[float]]:
    """``bpf.program.runs`` values of demo programs in time order, by (name, id).

    Keyed by id too: demo programs of other processes on the host share the names.
    """
    runs: dict[tuple[str, str], list[float]] = {}
    for p in sorted(points, key=lambda p: p.time_ns):
        name = p.attributes.get(names.PROGRAM_NAME, "")
        if p.metric == names.RUNS.name and name in PROGRAM_NAMES:
            runs.setdefault((name, p.attributes[names.PROGRAM_ID]), []).append(p.value)
    return runs


EXPECTED = tuple(m for m in names.ALWAYS if m is not names.RECURSION_MISSES)
"""The default set for the demo's programs: none of their types counts recursion misses."""


def complete(points: list[DataPoint]) -> bool:
    """Every metric of the default set arrived, and runs of every demo program grew."""
    if not {m.name for m in EXPECTED} <= {p.metric for p in points}:
        return False
    growing = {name for (name, _id), v in demo_runs(points).items() if v[-1] > v[0]}
    return growing == set(PROGRAM_NAMES)


def summary(points: list[DataPoint]) -> str:
    missing = {m.name for m in EXPECTED} - {p.metric for p in points}
    runs = {key: (v[0], v[-1], len(v)) for key, v in demo_runs(points).items()}
    return f"{len(points)} points; metrics missing: {sorted(missing)}; demo runs: {runs}"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_bpftop_otel_through_the_rotel_agent_config(tmp_path: Path, protocol: str) -> None:
    with rotel_with("debug.env", tmp_path, {}) as (sink, sink_out):
        gateway = {"ROTEL_OTLP_EXPORTER_ENDPOINT": f"http://{sink['ROTEL_OTLP_GRPC_ENDPOINT']}"}
        with rotel_with("agent.env", tmp_path, gateway) as (agent, agent_out):
            address = agent[
                "ROTEL_OTLP_GRPC_ENDPOINT" if protocol == "grpc" else "ROTEL_OTLP_HTTP_ENDPOINT"
            ]
            args = [
                "--demo", "--name", "otel_demo_*", "--interval", "0.5", "--export-interval", "1",
                "--exporter", "otlp", "--protocol", protocol, "--endpoint", f"http://{address}",
            ]  # fmt: skip
            with Cli(tmp_path, args, cli_env()) as cli:
                points = wait_until(lambda: complete(p := received(sink_out)) and p, 90)
                assert points, (
                    f"the debug sink did not receive every metric with growing runs: "
                    f"{summary(received(sink_out))}\n{cli.describe()}\n"
                    f"agent:\n{tail(agent_out)}\nsink:\n{tail(sink_out, 10)}"
                )
    by_name = {p.metric: p for p in points}
    assert names.RECURSION_MISSES.name not in by_name
    for metric in EXPECTED:
        point = by_name[metric.name]
        assert point.unit == metric.unit, metric.name
        assert point.data_type == ("Gauge" if metric.kind == "gauge" else "Sum"), metric.name
    assert by_name[names.STATS_ENABLED.name].value == 1.0
    assert points[-1].resource.get("service.name") == "bpftop-otel"
    demo = [p for p in points if p.attributes.get(names.PROGRAM_NAME) in PROGRAM_NAMES]
    assert {p.attributes[names.PROGRAM_TYPE] for p in demo} >= {"socket_filter", "xdp"}
