"""Other ways a ``bpftop-otel`` run starts and ends: ``--count`` with the console exporter,
a collector that is down at shutdown, the live view refused without a terminal."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from peers import Cli, Rotel, cli_command, cli_env, free_port, run_cli, wait_until

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
    assert re.search(r"WARNING .*final export (to .+ )?(failed|did not finish)", err), err
    # One WARNING for the outage, one for the final export: nothing per failed attempt.
    periodic = [x for x in err.splitlines() if " WARNING " in x and "export to" in x]
    assert len([x for x in periodic if "final export" not in x]) == 1, err


def test_live_view_without_a_terminal_is_refused() -> None:
    proc = run_cli(["--live", "--count", "1"], timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("bpftop-otel: error: the live view needs a terminal")


def test_live_view_and_exporter_run_together(tmp_path: Path) -> None:
    """``--live --exporter otlp``: the view draws in a terminal while the collector gets
    the metrics; ``q`` ends both, with exit status 0."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("tmux is not installed")
    server = f"bpftop-otel-test-{uuid.uuid4().hex[:8]}"

    def run_tmux(*args: str) -> str:
        return subprocess.run(
            [tmux, "-L", server, *args], capture_output=True, text=True, timeout=10, check=False
        ).stdout

    with Rotel(tmp_path / "rotel") as rotel:
        cmd = [
            *cli_command(),
            "--live",
            "--demo",
            "--interval",
            "0.5",
            "--exporter",
            "otlp",
            "--endpoint",
            rotel.grpc_url,
            "--export-interval",
            "1",
        ]
        err_file = shlex.quote(str(tmp_path / "live.err"))
        script = f"{shlex.join(cmd)} 2>{err_file}; echo __EXIT__$?; sleep 30"
        env = cli_env(TERM="xterm-256color")
        subprocess.run(
            [tmux, "-L", server, "new-session", "-d", "-s", "t", "-x", "120", "-y", "30"]
            + ["sh", "-c", script],
            env=env,
            timeout=10,
            check=True,
        )
        try:
            drawn = wait_until(
                lambda: "otel_demo_sock" in run_tmux("capture-pane", "-p", "-t", "t"), 30
            )
            assert drawn, run_tmux("capture-pane", "-p", "-t", "t")
            rotel.wait_points(
                lambda pts: any(
                    p.metric == "bpf.program.runs"
                    and p.attributes.get("bpf.program.name") == "otel_demo_sock"
                    for p in pts
                ),
                30,
                "metrics while the live view runs",
            )
            run_tmux("send-keys", "-t", "t", "q")
            ended = wait_until(lambda: "__EXIT__" in run_tmux("capture-pane", "-p", "-t", "t"), 30)
            screen = run_tmux("capture-pane", "-p", "-t", "t")
            assert ended and "__EXIT__0" in screen, screen
        finally:
            run_tmux("kill-server")
    err = (tmp_path / "live.err").read_text()
    assert "Traceback" not in err
    assert "final export done" in err, err
