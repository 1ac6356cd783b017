"""5,000 programs loaded and unloaded at 100 per second while one ``bpftop-otel`` runs the
live view (in tmux) and serves the Prometheus endpoint.

Checked on every scrape during the churn: no negative or non-finite figure, no
``otel_metric_overflow`` series.  After the churn: the exported programs of ours are
exactly the ones still loaded (no series of an unloaded program), resident size grew less
than 10 % after the warm-up, and the live view quits cleanly with the terminal restored.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from peers import cli_command, free_port, wait_for_port
from process_probe import rss_kib
from tmux_pane import Pane

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

TOTAL = 5000
RATE = 250.0
ALIVE = 100
INTERVAL = 0.1
WARM_UP_S = 14.0
"""The live view's history (120 passes at 0.1 s = 12 s) is full by then."""
LOADER = Path(__file__).with_name("churn_loader.py")
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$", re.MULTILINE)
ID_LABEL = re.compile(r'bpf_program_id="(\d+)"')
NAME_LABEL = re.compile(r'bpf_program_name="([^"]*)"')


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def check_figures(text: str) -> list[str]:
    """Every sample that is negative, non-finite or an overflow series."""
    bad = []
    for m in SAMPLE.finditer(text):
        if not m["name"].startswith("bpf_"):
            continue
        value = float(m["value"])
        if "otel_metric_overflow" in m["labels"] or not math.isfinite(value) or value < 0:
            bad.append(m.group(0))
        elif m["name"].startswith("bpf_program_cpu_utilization") and value > 4:
            bad.append(m.group(0))  # a fraction of all CPUs: absurd far above 1
    return bad


def our_exported_ids(text: str, prefix: str) -> set[int]:
    ids = set()
    for m in SAMPLE.finditer(text):
        name = NAME_LABEL.search(m["labels"])
        if name and name.group(1).startswith(prefix):
            ids.add(int(ID_LABEL.search(m["labels"]).group(1)))  # type: ignore[union-attr]
    return ids


def test_churn_under_exporter_and_live_view(tmp_path: Path) -> None:
    port = free_port()
    prefix = f"rc{os.getpid() % 10000}_"
    status_file = tmp_path / "loader.json"
    pane = Pane(
        [*cli_command(), "--live", "--interval", str(INTERVAL), "--exporter", "prometheus",
         "--prometheus-port", str(port), "--name", f"{prefix}*"],
        tmp_path,
    )  # fmt: skip
    loader: subprocess.Popen[bytes] | None = None
    try:
        pane.wait_for("rows ", 30)
        assert wait_for_port(port, 20), pane.capture()
        pid = pane.program_pid()
        loader = subprocess.Popen(
            [sys.executable, str(LOADER), "--total", str(TOTAL), "--rate", str(RATE),
             "--alive", str(ALIVE), "--prefix", prefix, "--status", str(status_file)],
            stdin=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        started = time.monotonic()
        status: dict[str, object] = {}
        rss_base = rss_max = 0
        scrapes = 0
        bad: list[str] = []
        while not status.get("done"):
            assert loader.poll() is None or status_file.exists(), loader.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() - started < 150, f"churn too slow: {status}"
            time.sleep(1)
            if status_file.exists():
                status = json.loads(status_file.read_text())
            bad += check_figures(scrape(port))
            scrapes += 1
            rss = rss_kib(pid)
            if time.monotonic() - started >= WARM_UP_S:
                rss_base = rss_base or rss
                rss_max = max(rss_max, rss)
        assert loader.poll() is None, loader.stderr.read()  # type: ignore[union-attr]
        alive = set(status["alive_ids"])  # type: ignore[call-overload]

        # A few sampling passes and exports later, the exported programs of ours are the
        # ones still loaded, all of them.
        time.sleep(8 * INTERVAL + 1)
        text = scrape(port)
        exported = our_exported_ids(text, prefix)
        bad += check_figures(text)
        rss_end = rss_kib(pid)
        rss_max = max(rss_max, rss_end)

        screen = pane.capture()
        pane.tmux("send-keys", "-t", "live", "q")
        assert pane.exit_status() == 0, pane.capture()
        restored = pane.flags()
    finally:
        if loader is not None and loader.poll() is None:
            loader.communicate(b"", timeout=30)
        pane.kill()

    rate = int(status["loaded"]) / float(status["seconds"])  # type: ignore[call-overload]
    print(
        f"churn: {status['loaded']} loaded, {status['unloaded']} unloaded in "
        f"{float(status['seconds']):.1f} s ({rate:.1f}/s); {scrapes} scrapes; RSS after "  # type: ignore[arg-type]
        f"warm-up {rss_base} KiB, max {rss_max} KiB, end {rss_end} KiB"
    )
    assert status["loaded"] == TOTAL and status["unloaded"] == TOTAL - ALIVE
    assert rate >= 50, f"loader reached only {rate:.1f} programs/s"
    assert not bad, f"negative, non-finite or overflow samples: {bad[:10]}"
    assert exported <= alive, f"unloaded programs still exported: {sorted(exported - alive)[:10]}"
    assert exported == alive, f"loaded programs missing: {sorted(alive - exported)[:10]}"
    assert rss_base and rss_max < rss_base * 1.10, (rss_base, rss_max)
    assert "Traceback" not in screen
    assert restored == "0 1"
