"""``bpftop-otel --per-cpu`` exporting the per-CPU counters, checked against a sender pinned
to one CPU: through the Prometheus endpoint (and the busiest-CPU PromQL of docs/metrics.md in
a real Prometheus), and through OTLP to the rotel collector.

A socket filter on a loopback UDP socket runs on the CPU that sent the datagram (see
tests/kernel/test_per_cpu.py), so every run of the test's filter lands on the sender's CPU.
"""

from __future__ import annotations

import re
import signal
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_progs import counting_filter, send_on, two_online_cpus
from peers import Cli, DataPoint, Prometheus, Rotel, cli_env, free_port, wait_for_port, wait_until
from prometheus_client.parser import text_string_to_metric_families

from otel_bpf.kernel.stats import stats_enabled
from otel_bpf.kernel.system import possible_cpus

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture(autouse=True)
def _stats_on() -> Iterator[None]:
    # Runs sent before bpftop-otel starts (and holds stats itself) must be counted too.
    with stats_enabled():
        yield


NAME = "otel_t_cpuexp"
METRICS_DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


@pytest.fixture
def two_cpus() -> tuple[int, int]:
    return two_online_cpus()


def scrape(port: int, prog_id: int) -> dict[str, dict[int | None, float]]:
    """Our program's samples on the endpoint: name -> {cpu (None for a total): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, dict[int | None, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("bpf_program_id") == str(prog_id):
                cpu = s.labels.get("cpu_logical_number")
                out.setdefault(s.name, {})[None if cpu is None else int(cpu)] = s.value
    return out


def busiest_cpu_queries() -> list[str]:
    """The PromQL of the metrics reference's busiest-CPU table."""
    text = METRICS_DOC.read_text()
    table = text[text.index("| busiest CPU of each program | PromQL |") :]
    table = table[: table.index("\n\n")]
    return re.findall(r"`(topk[^`]*)`", table)


def test_prometheus_per_cpu_series_follow_the_sender(
    tmp_path: Path, two_cpus: tuple[int, int]
) -> None:
    a, b = two_cpus
    queries = busiest_cpu_queries()
    assert len(queries) == 2, queries
    port = free_port()
    args = ["--per-cpu", "--interval", "0.1", "--name", NAME, "--exporter", "prometheus",
            "--prometheus-port", str(port)]  # fmt: skip
    with counting_filter(NAME) as f:
        send_on(f, a, 120)
        with Cli(tmp_path, args, cli_env()) as cli:
            assert wait_for_port(port, 30, cli.proc), f"no scrape endpoint\n{cli.describe()}"

            def runs_reach(total: int) -> dict[str, dict[int | None, float]] | None:
                got = scrape(port, f.prog_id)
                return got if got.get("bpf_program_runs_total", {}).get(None) == total else None

            got = wait_until(lambda: runs_reach(120), 10, 0.05)
            assert got, cli.describe()
            cpus = possible_cpus()
            runs = got["bpf_program_cpu_runs_total"]
            assert sorted(runs) == cpus
            assert runs[a] == 120 and all(runs[c] == 0 for c in cpus if c != a)
            run_time = got["bpf_program_cpu_run_time_seconds_total"]
            assert run_time[a] == got["bpf_program_run_time_seconds_total"][None] > 0

            # The sender moves: a scrape after the next pass has the new runs on b.
            send_on(f, b, 80)
            got = wait_until(lambda: runs_reach(200), 10, 0.05)
            assert got, cli.describe()
            runs = got["bpf_program_cpu_runs_total"]
            assert (runs[a], runs[b]) == (120, 80)
            assert sum(runs.values()) == got["bpf_program_runs_total"][None]
            assert "bpf_program_cpu_recursion_misses_total" not in got  # a socket filter

            # The busiest-CPU queries of the docs, in a real Prometheus, with traffic on b.
            stop = threading.Event()

            def keep_sending() -> None:
                while not stop.is_set():
                    send_on(f, b, 20)
                    stop.wait(0.05)

            sender = threading.Thread(target=keep_sending, daemon=True)
            sender.start()
            try:
                with Prometheus(tmp_path / "prometheus", f"127.0.0.1:{port}") as prom:
                    for query in queries:
                        promql = query.replace("[1m]", "[5s]").replace(
                            "_total[", f'_total{{bpf_program_name="{NAME}"}}['
                        )

                        def busiest(q: str = promql) -> list[dict[str, str]]:
                            rows = prom.query(q)
                            return [r["metric"] for r in rows if float(r["value"][1]) > 0]

                        top = wait_until(busiest, 30, 0.5)
                        assert top, f"{promql}: no result\n{cli.describe()}"
                        assert [r["cpu_logical_number"] for r in top] == [str(b)], top
                        assert top[0]["bpf_program_id"] == str(f.prog_id)
            finally:
                stop.set()
                sender.join(10)
            cli.signal(signal.SIGTERM)
            assert cli.wait(30) == 0, cli.describe()
    assert "Traceback" not in cli.stderr()


def test_rotel_receives_the_per_cpu_series(tmp_path: Path, two_cpus: tuple[int, int]) -> None:
    a, _ = two_cpus
    with counting_filter(NAME) as f, Rotel(tmp_path / "rotel") as rotel:
        send_on(f, a, 60)
        args = ["--per-cpu", "--interval", "0.1", "--name", NAME, "--export-interval", "0.2",
                "--endpoint", rotel.grpc_url]  # fmt: skip

        def ours(pts: list[DataPoint]) -> list[DataPoint]:
            return [
                p
                for p in pts
                if p.metric == "bpf.program.cpu.runs"
                and p.attributes.get("bpf.program.id") == str(f.prog_id)
            ]

        with Cli(tmp_path, args, cli_env()) as cli:
            points = rotel.wait_points(
                lambda pts: any(p.value == 60 for p in ours(pts)), 30, "bpf.program.cpu.runs"
            )
            cli.signal(signal.SIGTERM)
            assert cli.wait(30) == 0, cli.describe()
    cpu_runs = ours(points)
    assert {(p.unit, p.data_type, p.monotonic) for p in cpu_runs} == {("{run}", "Sum", True)}
    last = max(p.time_ns for p in cpu_runs)
    by_cpu = {p.attributes["cpu.logical_number"]: p.value for p in cpu_runs if p.time_ns == last}
    assert by_cpu == {str(c): (60 if c == a else 0) for c in possible_cpus()}
    assert {p.metric for p in points} >= {"bpf.program.cpu.run.time", "bpf.program.runs"}
    # An int attribute, as the semantic conventions define cpu.logical_number.
    assert re.search(r"-> cpu\.logical_number: Int\(\d+\)", rotel.out.read_text())
    assert "Traceback" not in cli.stderr()
