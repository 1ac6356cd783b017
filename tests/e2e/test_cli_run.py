"""Other ways a ``bpftop-otel`` run starts and ends: ``--count`` with the console exporter,
a collector that is down at shutdown, the live view refused without a terminal."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from peers import Cli, cli_env, free_port, run_cli, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def test_count_with_console_exporter_exits_0_after_a_final_export() -> None:
    proc = run_cli(
        ["--count", "3", "--interval", "0.5", "--demo", "--exporter", "console"],
        timeout=60,
        env=cli_env(OTEL_METRIC_EXPORT_INTERVAL="600000"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    # The only export is the final one, printed by the console exporter on stdout.
    assert '"name": "bpf.program.runs"' in proc.stdout
    assert "otel_demo_sock" in proc.stdout
    assert "stopped after 3 ticks" in proc.stderr


def test_collector_down_at_shutdown_exit_is_bounded(tmp_path: Path) -> None:
    args = ["--endpoint", f"http://127.0.0.1:{free_port()}", "--export-interval", "1"]
    with Cli(tmp_path, args, cli_env()) as cli:
        assert wait_until(lambda: " WARNING " in cli.stderr(), 30), cli.describe()
        started = time.monotonic()
        cli.signal(signal.SIGTERM)
        status = cli.wait(30)
        took = time.monotonic() - started
    assert status == 0, cli.describe()
    assert took < 15, f"exit took {took:.1f} s"
    err = cli.stderr()
    assert "Traceback" not in err
    assert "final export failed" in err or "final export did not finish" in err
    assert len([x for x in err.splitlines() if "export to" in x and " WARNING " in x]) == 1


def test_live_view_without_a_terminal_is_refused() -> None:
    proc = run_cli(["--live", "--count", "1"], timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("bpftop-otel: error: the live view needs a terminal")
