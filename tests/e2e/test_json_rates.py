"""``bpftop-otel --json --count N --interval 1 --demo``: events/s match the driven rates.

The demo drives each program at a known rate (``DEFAULT_RATES``).  From the second tick
on, the JSON ``events_per_sec`` of each of this run's demo programs must be within 5 % of
its rate.  The machine is shared, so one tick may be disturbed: the median over the ticks
and the rate over the whole window must both be within 5 %; one full rerun is allowed.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from datetime import datetime
from typing import Any

import pytest
from peers import cli_command, cli_env, run_cli

from otel_bpf.cli import jsonl
from otel_bpf.demo import DEFAULT_RATES, PROGRAM_NAMES, programs

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(180)]

TICKS = 7
TOLERANCE = 0.05


def demo_ids(stderr: str) -> dict[str, int]:
    """Program ids of this run's demo, from the start-up log line."""
    line = next((x for x in stderr.splitlines() if "demo workload running" in x), "")
    return {name: int(pid) for name, pid in re.findall(r"(otel_demo_\w+) id (\d+)", line)}


def check_rates(objs: list[dict[str, Any]], ids: dict[str, int]) -> list[str]:
    """Problems found (empty when every demo program runs at its rate)."""
    problems = []
    for name, prog_id in ids.items():
        rows = sorted((o for o in objs if o["id"] == prog_id), key=lambda o: o["seq"])
        later = [o for o in rows if o["seq"] >= 2]
        if len(later) < TICKS - 2:
            problems.append(f"{name}: only {len(later)} ticks after the first")
            continue
        rates = [o["events_per_sec"] for o in later]
        if any(r is None for r in rates):
            problems.append(f"{name}: events_per_sec null after the first tick: {rates}")
            continue
        want = DEFAULT_RATES[name]
        median = statistics.median(rates)
        first, last = rows[1], rows[-1]
        span = (
            jsonl_time(last["timestamp"]) - jsonl_time(first["timestamp"])
            if last is not first
            else 0.0
        )
        window = (last["run_cnt"] - first["run_cnt"]) / span if span > 0 else 0.0
        for what, got in (("median", median), ("window", window)):
            if abs(got - want) > TOLERANCE * want:
                problems.append(
                    f"{name}: {what} {got:.1f}/s vs driven {want:g}/s (ticks: "
                    + ", ".join(f"{r:.0f}" for r in rates)
                    + ")"
                )
    return problems


def jsonl_time(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()


@pytest.mark.parametrize("sampling_path", ["syscall", "iterator"])
def test_events_per_sec_match_the_driven_rates(sampling_path: str) -> None:
    problems: list[str] = []
    for _attempt in range(2):
        proc = run_cli(
            [
                "--json",
                "--count",
                str(TICKS),
                "--interval",
                "1",
                "--demo",
                "--exporter",
                "none",
                "--sampling-path",
                sampling_path,
            ],
            timeout=90,
            env=cli_env(),
        )
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        objs = [json.loads(line) for line in proc.stdout.splitlines()]
        assert objs, proc.stderr
        assert all(tuple(o) == jsonl.FIELDS for o in objs)
        assert max(o["seq"] for o in objs) == TICKS
        ids = demo_ids(proc.stderr)
        assert set(ids) == set(PROGRAM_NAMES), proc.stderr
        assert f"programs read via {sampling_path}" in proc.stderr
        for o in objs:
            if o["id"] in ids.values():
                assert o["name"] in PROGRAM_NAMES
                if o["seq"] == 1:
                    assert o["events_per_sec"] is None and o["cpu_percent"] is None
        problems = check_rates(objs, ids)
        if not problems:
            break
    assert not problems, "\n".join(problems)


# The demo keeps the program fd of the programs it attaches through a BPF link.
DEMO_VIA = {
    programs.SOCK: ["prog"],
    programs.SLOW: ["prog"],
    programs.XDP: ["link", "prog"],
    programs.CGROUP_SKB: ["link", "prog"],
}


@pytest.mark.parametrize("sampling_path", ["syscall", "iterator"])
def test_owners_name_the_demo_process_once(sampling_path: str) -> None:
    proc = run_cli(
        [
            *("--json", "--count", "2", "--interval", "0.5", "--demo", "--owners"),
            *("--exporter", "none", "--sampling-path", sampling_path),
        ],
        timeout=60,
        env=cli_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert f"programs read via {sampling_path}" in proc.stderr
    ids = demo_ids(proc.stderr)
    assert set(ids) == set(DEMO_VIA), proc.stderr
    found = re.search(r"demo workload running \(pid (\d+)\)", proc.stderr)
    assert found, proc.stderr
    demo_pid = int(found[1])
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(isinstance(o["owners"], list) for o in objs)
    for o in objs:
        pids = [h["pid"] for h in o["owners"]]
        assert pids == sorted(set(pids)), o  # one entry per process, by pid
        keys = {"pid", "comm", "via", "cgroup", "container_id", "pod_uid"}
        assert all(set(h) == keys for h in o["owners"]), o
        assert all(h["via"] in (["link"], ["prog"], ["link", "prog"]) for h in o["owners"]), o
    for name, prog_id in ids.items():
        rows = [o["owners"] for o in objs if o["id"] == prog_id]
        assert len(rows) == 2, name
        for owners in rows:
            demo = [h for h in owners if h["pid"] == demo_pid]
            assert [h["via"] for h in demo] == [DEMO_VIA[name]], (name, owners)
            # A process of this host, in no container: its cgroup path, nothing more.
            assert demo[0]["cgroup"].startswith("/"), demo
            assert (demo[0]["container_id"], demo[0]["pod_uid"]) == (None, None), demo


def test_json_into_a_closed_pipe_ends_quietly() -> None:
    """``bpftop-otel --json | head -1``: exit 0 when the reader goes away, no traceback,
    and the demo is still cleaned up."""
    proc = subprocess.Popen(
        [*cli_command(), "--json", "--interval", "0.5", "--demo", "--exporter", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        first = proc.stdout.readline()
        assert json.loads(first)["seq"] == 1
        proc.stdout.close()
        status = proc.wait(30)
        err = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert status == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err
    assert "demo workload stopped" in err


def test_filters_select_the_json_programs() -> None:
    proc = run_cli(
        ["--json", "--count", "1", "--demo", "--exporter", "none"]
        + ["--type", "xdp", "--type", "cgroup_skb", "--name", "otel_demo_*"],
        timeout=60,
        env=cli_env(),
    )
    assert proc.returncode == 0, proc.stderr
    objs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert {o["name"] for o in objs} == {"otel_demo_xdp", "otel_demo_cgskb"}
    assert {o["type"] for o in objs} == {"xdp", "cgroup_skb"}
