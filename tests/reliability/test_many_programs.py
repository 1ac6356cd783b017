"""5,000 programs loaded at the same time, exported by the real command: each under its own
attributes, none folded into ``otel.metric.overflow`` (the SDK's default limit is 2000 series
per instrument), through the console exporter and through the rotel collector."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from kernel_progs import many_loaded, prog_id_of_fd
from peers import Rotel, cli_env, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

AT_ONCE = 5000
PER_PROGRAM = ("bpf.program.runs", "bpf.program.run.time")


@pytest.fixture(scope="module")
def loaded() -> Iterator[tuple[str, dict[int, str]]]:
    """AT_ONCE socket filters, named ``<prefix><i>``, loaded for the module's tests."""
    prefix = f"mp{os.getpid() % 10000}_"
    with many_loaded(AT_ONCE, prefix) as fds:
        yield prefix, {prog_id_of_fd(fd): f"{prefix}{i}" for i, fd in enumerate(fds)}


def console_exports(stdout: str) -> list[dict[str, object]]:
    """The MetricsData documents the console exporter printed, one after another."""
    decoder, docs, at = json.JSONDecoder(), [], 0
    while (at := stdout.find("{", at)) >= 0:
        doc, at = decoder.raw_decode(stdout, at)
        docs.append(doc)
    return docs


def test_console_exporter_has_every_program_under_its_own_attributes(
    loaded: tuple[str, dict[int, str]],
) -> None:
    prefix, expected = loaded
    proc = run_cli(
        ["--count", "2", "--interval", "1", "--exporter", "console", "--name", f"{prefix}*"],
        timeout=120,
        env=cli_env(OTEL_METRIC_EXPORT_INTERVAL="600000"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cardinality limit of the BPF program metrics raised" in proc.stderr, proc.stderr
    exports = console_exports(proc.stdout)
    assert exports, proc.stdout[-2000:]
    seen: dict[str, dict[int, str]] = {}
    for rm in exports[-1]["resource_metrics"]:  # type: ignore[attr-defined]
        for sm in rm["scope_metrics"]:
            for metric in sm["metrics"]:
                for point in metric["data"]["data_points"]:
                    attrs = point["attributes"]
                    assert "otel.metric.overflow" not in attrs, metric["name"]
                    if "bpf.program.id" in attrs:
                        by_id = seen.setdefault(metric["name"], {})
                        by_id[attrs["bpf.program.id"]] = attrs["bpf.program.name"]
    for name in PER_PROGRAM:
        assert seen.get(name) == expected, f"{name}: {len(seen.get(name, {}))} of {AT_ONCE}"


def test_rotel_receives_every_program_under_its_own_attributes(
    loaded: tuple[str, dict[int, str]], tmp_path: Path
) -> None:
    prefix, expected = loaded
    with Rotel(tmp_path / "rotel") as rotel:
        proc = run_cli(
            [
                "--count",
                "2",
                "--interval",
                "1",
                "--endpoint",
                rotel.grpc_url,
                "--name",
                f"{prefix}*",
            ],  # fmt: skip
            timeout=120,
            env=cli_env(OTEL_METRIC_EXPORT_INTERVAL="600000"),
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        points = rotel.wait_points(
            lambda ps: sum(p.metric == "bpf.program.runs" for p in ps) >= AT_ONCE,
            60,
            f"{AT_ONCE} bpf.program.runs points",
        )
    assert not [p for p in points if "otel.metric.overflow" in p.attributes]
    for name in PER_PROGRAM:
        got = {
            int(p.attributes["bpf.program.id"]): p.attributes["bpf.program.name"]
            for p in points
            if p.metric == name
        }
        assert got == expected, f"{name}: {len(got)} of {AT_ONCE}"
