"""SIGTERM, SIGINT and SIGHUP end ``bpftop-otel`` cleanly in every mode, and SIGKILL leaves
nothing switched on.

Per signal, four runs with the demo workload at once: headless OTLP to rotel, ``--json``,
the Prometheus endpoint, and the live view in tmux.  Each exits 0; the OTLP run sends a
final export after the signal; the stats fd was held by ``bpftop-otel`` alone (not by the
demo process) and is gone with it; the demo process and its programs are gone; the live
view's terminal is restored.  (tests/e2e/test_cli_signals.py checks SIGTERM/SIGINT with
``--json`` plus OTLP in more detail; this adds SIGHUP and the other modes.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from peers import Cli, Rotel, bpftool_programs, cli_command, cli_env, free_port, wait_until
from process_probe import gone, process_tree, stats_holder_pids
from tmux_pane import Pane

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.fdinfo import parse_fdinfo
from otel_bpf.kernel.loader import load_program

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

COMMON = ["--demo", "--interval", "0.5"]


def demo_program_ids(pid: int) -> set[int]:
    """Program ids held by the demo child processes of ``pid`` (from their fdinfo)."""
    ids: set[int] = set()
    for child in process_tree(pid) - {pid}:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{child}/fdinfo"):
                with (
                    contextlib.suppress(OSError, ValueError),
                    open(f"/proc/{child}/fdinfo/{fd}") as f,
                ):
                    prog_id = parse_fdinfo(f.read()).get("prog_id")
                    if prog_id:
                        ids.add(int(prog_id))
    return ids


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_ends_every_mode_cleanly(tmp_path: Path, signum: signal.Signals) -> None:
    with Rotel(tmp_path / "rotel") as rotel:
        prom_port = free_port()
        runs = {
            "otlp": Cli(tmp_path, [*COMMON, "--export-interval", "600", "--endpoint",
                                   rotel.grpc_url], cli_env(), name="otlp"),
            "json": Cli(tmp_path, [*COMMON, "--json", "--exporter", "none"], cli_env(),
                        name="json"),
            "prometheus": Cli(tmp_path, [*COMMON, "--exporter", "prometheus",
                                         "--prometheus-port", str(prom_port)], cli_env(),
                              name="prometheus"),
        }  # fmt: skip
        pane = Pane([*cli_command(), "--live", *COMMON], tmp_path)
        try:
            for cli in runs.values():
                cli.start()
            pane.wait_for("otel_demo_", 45)
            pids = {mode: cli.pid for mode, cli in runs.items()} | {"live": pane.program_pid()}
            for mode, cli in runs.items():
                assert wait_until(lambda c=cli: "sampling every" in c.stderr(), 45), (
                    f"{mode}: {cli.describe()}"
                )
            ids = {
                mode: wait_until(lambda p=pid: demo_program_ids(p), 20)
                for mode, pid in pids.items()
            }
            trees = {mode: process_tree(pid) for mode, pid in pids.items()}
            holders = stats_holder_pids()
            for mode, pid in pids.items():
                assert len(ids[mode]) >= 3, f"{mode}: demo programs {ids[mode]}"
                assert pid in holders, f"{mode}: bpftop-otel does not hold stats"
                assert not (trees[mode] - {pid}) & holders, f"{mode}: a child holds stats"
            assert not rotel.points(), "nothing is exported before the signal"

            signalled_ns = time.time_ns()
            for pid in pids.values():
                os.kill(pid, signum)
            statuses = {mode: cli.wait(30) for mode, cli in runs.items()}
            statuses["live"] = pane.exit_status(30)
            restored = pane.flags()
            points = rotel.wait_points(
                lambda pts: any(p.metric == "bpf.program.runs" for p in pts), 15, "final export"
            )
        finally:
            for cli in runs.values():
                cli.stop()
            pane.kill()

    assert statuses == dict.fromkeys(statuses, 0), {m: c.describe() for m, c in runs.items()}
    assert restored == "0 1", "live view left the terminal in the alternate screen"
    assert all(p.time_ns >= signalled_ns for p in points)
    exported = {
        int(p.attributes["bpf.program.id"]) for p in points if "bpf.program.id" in p.attributes
    }
    assert ids["otlp"] <= exported, "the final export lacks the demo programs"
    for mode, tree in trees.items():
        assert wait_until(lambda t=tree: all(gone(p) for p in t), 10), f"{mode}: process left"
        assert not tree & stats_holder_pids(), f"{mode}: stats fd still held"
    all_ids = set().union(*ids.values())
    left = wait_until(lambda: not (all_ids & {p["id"] for p in bpftool_programs()}), 15)
    assert left, f"demo programs still loaded: {all_ids & {p['id'] for p in bpftool_programs()}}"
    for mode, cli in runs.items():
        err = cli.stderr()
        assert "Traceback" not in err, f"{mode}: {err}"
        assert f"received {signum.name}" in err, f"{mode}: {err}"
        assert "stats now" in err and "demo workload stopped" in err, f"{mode}: {err}"


def test_sigkill_releases_stats_in_the_kernel(tmp_path: Path) -> None:
    from otel_bpf.kernel.stats import read_sysctl, stats_state

    # One program of our own, so --json has a line to write on a host with none.
    prog_fd = load_program(
        ProgType.SOCKET_FILTER,
        asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()]),
        "otel_t_sigkill",
    )
    cli = Cli(tmp_path, ["--json", "--interval", "0.5", "--exporter", "none"], cli_env())
    with contextlib.ExitStack() as cleanup, cli:
        cleanup.callback(os.close, prog_fd)
        assert wait_until(lambda: cli.json_objects(), 30), cli.describe()
        assert cli.pid in stats_holder_pids()
        cli.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        assert cli.wait(10) == -signal.SIGKILL
    assert cli.pid not in stats_holder_pids()
    others = stats_holder_pids()
    state = stats_state()
    assert not state.ours
    if not others:
        # Nothing else on the host holds stats: the kernel switched them off with our fd.
        assert state.others is False
        assert state.enabled is bool(read_sysctl())
    else:
        # Another test or tool on the host holds stats; ours is released all the same.
        assert state.others is True
    subprocess.run(["true"], check=True)
