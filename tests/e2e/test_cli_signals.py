"""SIGTERM and SIGINT end ``bpftop-otel`` cleanly: exit 0, a final export reaches the
collector after the signal, the stats fd it held is gone with it, and the demo programs
it loaded are unloaded.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from peers import (
    Cli,
    Rotel,
    bpftool_programs,
    children_of,
    cli_env,
    holds_stats_fd,
    stats_fd_count,
    wait_until,
)

from otel_bpf.demo import PROGRAM_NAMES

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(150)]


def demo_ids(stderr: str) -> dict[str, int]:
    line = next((x for x in stderr.splitlines() if "demo workload running" in x), "")
    return {name: int(pid) for name, pid in re.findall(r"(otel_demo_\w+) id (\d+)", line)}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_flushes_final_export_releases_stats_and_unloads_demo(
    tmp_path: Path, signum: signal.Signals
) -> None:
    with Rotel(tmp_path / "rotel") as rotel:
        # A 600 s export interval: the only export during the test is the final one.
        args = [
            "--demo",
            "--json",
            "--interval",
            "0.5",
            "--export-interval",
            "600",
            "--endpoint",
            rotel.grpc_url,
        ]
        with Cli(tmp_path, args, cli_env()) as cli:
            ticks = wait_until(lambda: len({o["seq"] for o in cli.json_objects()}) >= 3, 45)
            assert ticks, f"no sampling ticks\n{cli.describe()}"
            ids = demo_ids(cli.stderr())
            assert set(ids) == set(PROGRAM_NAMES), cli.describe()
            assert holds_stats_fd(cli.pid), "bpftop-otel does not hold anon_inode:bpf-stats"
            # --json and the exporter's plugin share the run's one stats switch.
            assert stats_fd_count(cli.pid) == 1, "one run, one stats fd"
            demo_children = children_of(cli.pid)
            assert demo_children, "the demo workload runs in a child process"
            assert not rotel.points(), "nothing is exported before the signal"

            signalled_ns = time.time_ns()
            cli.signal(signum)
            status = cli.wait(30)
        assert status == 0, cli.describe()

        points = rotel.wait_points(
            lambda pts: any(p.metric == "bpf.program.runs" for p in pts), 10, "the final export"
        )
    assert all(p.time_ns >= signalled_ns for p in points)
    final_runs = {
        int(p.attributes["bpf.program.id"]): p.value
        for p in points
        if p.metric == "bpf.program.runs" and "bpf.program.id" in p.attributes
    }
    for name, prog_id in ids.items():
        assert final_runs.get(prog_id, 0) > 0, f"{name} (id {prog_id}) not in the final export"

    # The process is gone, so is every fd it held (the stats fd included), and its demo.
    assert not os.path.exists(f"/proc/{cli.pid}")
    for child in demo_children:
        assert (
            not os.path.exists(f"/proc/{child}/status")
            or "zombie" in Path(f"/proc/{child}/status").read_text()
        )
    loaded = {p["id"] for p in bpftool_programs()}
    assert not loaded & set(ids.values()), "demo programs still loaded after exit"

    err = cli.stderr()
    assert "Traceback" not in err
    assert signum.name in err
    assert "stats now" in err
    assert "demo workload stopped" in err
