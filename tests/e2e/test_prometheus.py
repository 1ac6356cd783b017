"""A real Prometheus server scrapes ``bpftop-otel --exporter prometheus``; its HTTP API
returns the demo programs' series under the names the OpenTelemetry Prometheus exporter
translates ours to (``bpf.program.runs`` -> ``bpf_program_runs_total``, ...), and the PromQL
of docs/metrics.md computes from the counters what ``--derived-gauges`` exports.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from peers import Cli, Prometheus, cli_env, free_port, wait_for_port, wait_until

from otel_bpf.demo import PROGRAM_NAMES
from otel_bpf.kernel.system import online_cpus

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(150)]

DEMO = 'bpf_program_name=~"otel_demo_.*"'


GAUGES = (
    "bpf_program_run_rate_per_second",
    "bpf_program_run_time_average_seconds",
    "bpf_program_cpu_utilization",
)
METRICS_DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
WINDOW = 20
"""Seconds of the comparison window: 20 scrapes and 20 sampling periods of 1 s each."""
TOLERANCE = 0.05
"""Relative difference allowed between a counter query and the mean of its gauge over the
same window. At the demo's steady rates the two measure the same runs over different
periods: the gauge's 20 one-second sampling periods are not aligned with the scrapes, so the
ends of the window differ by up to a period's share of the rate's jitter, and rate()
extrapolates from the first and last scrape to the window's ends (measured: under 1 %)."""


def counter_queries() -> dict[str, str]:
    """Gauge name -> the PromQL that docs/metrics.md gives for it from the counters."""
    lines = METRICS_DOC.read_text().splitlines()
    start = lines.index("| opt-in gauge | the same from the counters |") + 2
    found = {}
    for row in lines[start:]:
        if not row.startswith("|"):
            break
        gauge, query = re.findall(r"`([^`]*)`", row)
        found[gauge] = query
    return found


def demo_ids(stderr: str) -> dict[str, int]:
    line = next((x for x in stderr.splitlines() if "demo workload running" in x), "")
    return {name: int(pid) for name, pid in re.findall(r"(otel_demo_\w+) id (\d+)", line)}


def by_id(result: list[dict[str, Any]]) -> dict[int, float]:
    return {int(r["metric"]["bpf_program_id"]): float(r["value"][1]) for r in result}


def test_prometheus_scrapes_the_demo_series(tmp_path: Path) -> None:
    port = free_port()
    args = [
        "--demo",
        "--interval",
        "0.5",
        "--exporter",
        "prometheus",
        "--prometheus-port",
        str(port),
    ]
    with Cli(tmp_path, args, cli_env()) as cli:
        assert wait_for_port(port, 30, cli.proc), f"no scrape endpoint\n{cli.describe()}"
        assert wait_until(lambda: "sampling every" in cli.stderr(), 30), cli.describe()
        ids = demo_ids(cli.stderr())
        assert set(ids) == set(PROGRAM_NAMES), cli.describe()
        assert f"http://127.0.0.1:{port}/metrics (Prometheus)" in cli.stderr()

        with Prometheus(tmp_path / "prometheus", f"127.0.0.1:{port}") as prom:

            def all_demo_runs() -> dict[int, float] | None:
                got = by_id(prom.query(f"bpf_program_runs_total{{{DEMO}}}"))
                return got if all(got.get(i, 0) > 0 for i in ids.values()) else None

            runs = wait_until(all_demo_runs, 60, 1.0)
            assert runs, f"demo series never scraped:\n{prom.query('up')}\n{cli.describe()}"

            def rates() -> dict[int, float] | None:
                got = by_id(prom.query(f"rate(bpf_program_runs_total{{{DEMO}}}[5s])"))
                return got if all(got.get(i, 0) > 0 for i in ids.values()) else None

            assert wait_until(rates, 30, 1.0), "runs never increased between scrapes"

            run_time = by_id(prom.query(f"bpf_program_run_time_seconds_total{{{DEMO}}}"))
            assert all(run_time.get(i, 0) > 0 for i in ids.values()), run_time
            # Counters only by default: the period gauges are opt-in, and none of the demo's
            # socket filter, XDP and cgroup_skb programs can miss a run.
            for gauge in GAUGES:
                assert not prom.query(f"{gauge}{{{DEMO}}}"), gauge
            assert not prom.query(f"bpf_program_recursion_misses_total{{{DEMO}}}")
            # Nor per-CPU series without --per-cpu.
            assert not prom.query('{__name__=~"bpf_program_cpu_.*_total"}')
            assert not prom.query("{cpu_logical_number!=''}")
            series = prom.query(f"bpf_program_runs_total{{{DEMO}}}")
            types = {
                r["metric"]["bpf_program_name"]: r["metric"]["bpf_program_type"] for r in series
            }
            assert types["otel_demo_xdp"] == "xdp"
            assert types["otel_demo_cgskb"] == "cgroup_skb"
            assert types["otel_demo_sock"] == "socket_filter"
            stats = prom.query("bpf_stats_enabled")
            assert stats and float(stats[0]["value"][1]) == 1
            up = prom.query('up{job="bpftop-otel"}')
            assert up and float(up[0]["value"][1]) == 1
            target = prom.query("target_info")
            assert target and target[0]["metric"]["service_name"] == "bpftop-otel"

        cli.signal(signal.SIGTERM)
        assert cli.wait(30) == 0, cli.describe()
    assert "Traceback" not in cli.stderr()


def test_promql_from_the_counters_gives_the_derived_gauges(tmp_path: Path) -> None:
    queries = counter_queries()
    assert set(queries) == set(GAUGES)
    cpus = online_cpus()
    port = free_port()
    args = ["--demo", "--derived-gauges", "--interval", "1", "--exporter", "prometheus",
            "--prometheus-port", str(port)]  # fmt: skip
    with Cli(tmp_path, args, cli_env()) as cli:
        assert wait_for_port(port, 30, cli.proc), f"no scrape endpoint\n{cli.describe()}"
        assert wait_until(lambda: "sampling every" in cli.stderr(), 30), cli.describe()
        ids = demo_ids(cli.stderr())
        with Prometheus(tmp_path / "prometheus", f"127.0.0.1:{port}") as prom:

            def rated() -> bool:
                got = by_id(prom.query(f"bpf_program_run_rate_per_second{{{DEMO}}}"))
                return all(i in got for i in ids.values())

            assert wait_until(rated, 60, 1.0), f"no run rates scraped\n{cli.describe()}"
            # A full window of scrapes after the first gauge point.
            time.sleep(WINDOW + 2)
            at = time.time()
            report = []
            for gauge, query in queries.items():
                promql = re.sub(r"\b(bpf_program_\w+)", rf"\1{{{DEMO}}}", query)
                promql = promql.replace("[1m]", f"[{WINDOW}s]").replace("<cpus>", str(cpus))
                derived = by_id(prom.query(promql, at))
                mean = by_id(prom.query(f"avg_over_time({gauge}{{{DEMO}}}[{WINDOW}s])", at))
                for name, prog_id in ids.items():
                    want, got = mean[prog_id], derived[prog_id]
                    report.append(f"{gauge} {name}: gauge mean {want:.6g}, counters {got:.6g}")
                    assert want > 0 and abs(got - want) <= TOLERANCE * want, "\n".join(report)
            print("\n".join(report))
        cli.signal(signal.SIGTERM)
        assert cli.wait(30) == 0, cli.describe()


def test_a_scrape_storm_walks_the_kernel_at_most_once_per_interval(tmp_path: Path) -> None:
    """Headless with counters only, each scrape collects; passes are bounded by --interval
    (a scrape sooner than that exports the newest pass), counted from the process's log."""
    import time
    import urllib.request

    port = free_port()
    args = ["--interval", "1", "--exporter", "prometheus", "--prometheus-port", str(port)]
    args += ["--demo", "--log-level", "debug"]
    with Cli(tmp_path, args, cli_env()) as cli:
        assert wait_for_port(port, 30, cli.proc), f"no scrape endpoint\n{cli.describe()}"
        assert wait_until(lambda: "when metrics are collected" in cli.stderr(), 30), cli.describe()
        started = time.monotonic()
        scrapes = 0
        while scrapes < 400 and time.monotonic() - started < 20:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                assert b"bpf_program_runs_total" in r.read()
            scrapes += 1
        elapsed = time.monotonic() - started
        cli.signal(signal.SIGTERM)
        assert cli.wait(30) == 0, cli.describe()
    err = cli.stderr()
    exported = [int(n) for n in re.findall(r"collection: pass (\d+) exported", err)]
    passes = max(int(n) for n in re.findall(r"\((\d+) passes so far\)", err))
    assert len(exported) >= scrapes  # every scrape collected (the final one too)
    # One pass at start, then at most one per started second of the storm (and the exit's).
    assert passes <= 2 + int(elapsed) + 1, (passes, scrapes, elapsed)
    assert passes < scrapes / 4, (passes, scrapes, elapsed)
    assert "stopped after 0 ticks" in err and "Traceback" not in err
