"""The Grafana dashboard's queries against real series, not against names written by hand.

``bpftop-otel --exporter prometheus --demo`` serves its endpoint on a free loopback port.
Every metric name in the dashboard's PromQL, and every label it groups by or shows in a
legend, must exist in a scrape of that endpoint (the exporter adds unit suffixes and
``_total`` itself, so this is where a renamed metric or a changed unit shows up). Then a real
Prometheus, configured by collector-config/prometheus/prometheus.yml, scrapes the same
endpoint and every panel query must return data. Every query works on the counters, so no
``--derived-gauges``; a raw tracepoint program loaded by the test gives the recursion-misses
panel a series (none of the demo's program types can miss a run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers import Cli, Prometheus, cli_env, free_port, tail, wait_until

from otel_bpf.demo import PROGRAM_NAMES
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.loader import load_program
from otel_bpf.kernel.syscall import close

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

CONFIG = Path(__file__).resolve().parents[2] / "collector-config"
DASHBOARD = CONFIG / "grafana" / "bpf-programs.json"
SCRAPE_CONFIG = CONFIG / "prometheus" / "prometheus.yml"
# Added by Prometheus at scrape time (target labels), not by the exporter.
TARGET_LABELS = {"instance", "job"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "and", "or", "unless", "offset"}  # fmt: skip
RAW_TP_NAME = "otel_t_rawtp"  # within the kernel's 15 characters
GRAFANA_VARIABLES = {"$__rate_interval": "10s", "$topk": "10", "$instance": ".*"}
OTHER_EXPORTERS = {"kube_pod_info": {"namespace", "pod", "uid", "k8s_pod_uid"}}
"""Series the dashboard joins from other exporters (kube-state-metrics), with their labels
(``k8s_pod_uid`` is made by the query's label_replace).  The panels that use them get data in
tests/e2e/test_pod_join.py, where a Prometheus also scrapes a kube_pod_info series."""
INFO_SERIES = {"bpf_program_owner", "bpf_program_attachment"}
"""The opt-in info series (--owner-series, --attachment-series) the dashboard reads besides
the counters."""
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def dashboard_targets() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t for panel in dashboard["panels"] for t in panel["targets"]]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions or labels."""
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = GROUPING.sub(" ", expr)  # grouping and matching labels
    expr = re.sub(r"\$\w+", " ", expr)  # Grafana variables
    expr = re.sub(r'"[^"]*"', " ", expr)
    found = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if not rest.startswith("(") and match.group(0) not in PROMQL_WORDS:
            found.add(match.group(0))
    return found


def label_names(target: dict[str, Any]) -> set[str]:
    """Labels a target groups by, matches on, or shows in its legend."""
    expr = target["expr"]
    labels: set[str] = set()
    for group in GROUPING.findall(expr):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    labels |= set(
        re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", target.get("legendFormat", ""))
    )
    return labels


def test_name_extraction_sees_metrics_not_labels_or_functions() -> None:
    expr = (
        'sum by (bpf_program_name, instance) (rate(bpf_program_runs_total{instance=~"$instance"}'
        "[$__rate_interval])) / topk($topk, bpf_program_count)"
    )
    assert metric_names(expr) == {"bpf_program_runs_total", "bpf_program_count"}
    assert label_names({"expr": expr, "legendFormat": "{{bpf_program_type}}"}) == {
        "bpf_program_name",
        "instance",
        "bpf_program_type",
    }


def test_name_extraction_reads_joins() -> None:
    expr = (
        "sum by (namespace, pod) (rate(bpf_program_run_time_seconds_total[1m]) * on (instance, "
        "bpf_program_id) group_right max by (instance, k8s_pod_uid) (bpf_program_owner) * on "
        '(k8s_pod_uid) group_left (namespace, pod) label_replace(kube_pod_info, "k8s_pod_uid", '
        '"$1", "uid", "(.+)"))'
    )
    assert metric_names(expr) == {
        "bpf_program_run_time_seconds_total",
        "bpf_program_owner",
        "kube_pod_info",
    }
    assert label_names({"expr": expr}) == {
        "namespace",
        "pod",
        "instance",
        "bpf_program_id",
        "k8s_pod_uid",
    }


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def series_labels(text: str) -> dict[str, set[str]]:
    """Sample name -> every label name seen on it, from the Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def demo_series_present(port: int) -> dict[str, set[str]] | None:
    """The scrape's series once every demo program has run and the raw tracepoint program
    has its recursion-misses series."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = scrape(port)
    except OSError:
        return None
    ran, misses = set(), set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            name = s.labels.get("bpf_program_name")
            if s.name == "bpf_program_runs_total" and s.value > 0:
                ran.add(name)
            elif s.name == "bpf_program_recursion_misses_total":
                misses.add(name)
    ready = ran >= set(PROGRAM_NAMES) and RAW_TP_NAME in misses
    return series_labels(text) if ready else None


@pytest.fixture
def raw_tracepoint_program() -> Iterator[int]:
    """A loaded (not attached) raw tracepoint program: a type whose misses the kernel counts."""
    insns = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])
    fd = load_program(ProgType.RAW_TRACEPOINT, insns, RAW_TP_NAME)
    try:
        yield fd
    finally:
        close(fd)


class RepoConfigPrometheus(Prometheus):
    """Prometheus running collector-config/prometheus/prometheus.yml.

    Two changes to the file: its ``bpftop-otel`` job scrapes ``target`` (a free port), and
    every scrape is 1 s apart, so that rate() has points within seconds.
    """

    def start(self, timeout: float = 30.0) -> Prometheus:
        yaml = pytest.importorskip("yaml")
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not os.access(binary, os.X_OK):
            pytest.skip("prometheus not installed (apt-get install prometheus)")
        config = yaml.safe_load(SCRAPE_CONFIG.read_text())
        config["global"].update(scrape_interval="1s", scrape_timeout="1s")
        (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "bpftop-otel"]
        job["static_configs"] = [{"targets": [self.target]}]
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config))
        command = [
            binary,
            f"--config.file={config_file}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        if not wait_until(self._ready, timeout):
            self.stop()
            pytest.fail(f"prometheus did not become ready:\n{tail(self.log)}")
        return self


def test_dashboard_queries_match_a_real_scrape(tmp_path: Path, raw_tracepoint_program: int) -> None:
    port = free_port()
    args = ["--exporter", "prometheus", "--demo", "--interval", "0.5",
            "--owner-series", "--attachment-series",
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(port)]  # fmt: skip
    targets = dashboard_targets()
    with Cli(tmp_path, args, cli_env()) as cli:
        scraped = wait_until(lambda: demo_series_present(port), 60)
        assert scraped, f"no demo runs or misses series on :{port}\n{cli.describe()}"

        used = set().union(*(metric_names(t["expr"]) for t in targets))
        assert len(used) >= 5, f"the name extraction found too little: {used}"
        # The dashboard reads the counters (and the info series) only: it works without
        # --derived-gauges.
        assert not {n for n in used if not n.endswith("_total")} - {
            "bpf_program_count",
            "bpf_stats_enabled",
            *INFO_SERIES,
            *OTHER_EXPORTERS,
        }, used
        missing = sorted(used - set(scraped) - set(OTHER_EXPORTERS))
        assert not missing, (
            f"dashboard queries {missing}, not in the scrape; scraped bpf names: "
            f"{sorted(n for n in scraped if n.startswith('bpf'))}"
        )
        for target in targets:
            labels_on_series = set().union(
                *(
                    scraped.get(n, OTHER_EXPORTERS.get(n, set()))
                    for n in metric_names(target["expr"])
                )
            )
            unknown = label_names(target) - labels_on_series - TARGET_LABELS
            assert not unknown, f"{target['expr']!r} uses labels {unknown} its series lack"

        with RepoConfigPrometheus(tmp_path / "prometheus", f"127.0.0.1:{port}") as prometheus:
            for target in targets:
                if metric_names(target["expr"]) & set(OTHER_EXPORTERS):
                    continue  # no kube-state-metrics here: see tests/e2e/test_pod_join.py
                promql = target["expr"]
                for variable, value in GRAFANA_VARIABLES.items():
                    promql = promql.replace(variable, value)
                result = wait_until(lambda q=promql: prometheus.query(q), 30, interval=1.0)
                assert result, f"no data for {target['expr']!r} ({promql!r})"
            stats = prometheus.query('bpf_stats_enabled{job="bpftop-otel"}')
            assert [float(r["value"][1]) for r in stats] == [1.0]
