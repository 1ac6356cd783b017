"""Stats that someone else switched on stay on after we exit; the sysctl fallback puts the
previous value back on every exit path.

tests/kernel/test_stats.py covers the fallback's normal exit, an exception and interpreter
exit; this adds a ``bpftop-otel`` run next to another holder or a sysctl already at 1, and a
process using the fallback that is ended by SIGTERM or SIGHUP.  The sysctl is put back to
the value it had before each test, whatever happens.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import run_cli
from process_probe import stats_holder_pids

from otel_bpf.kernel.stats import SYSCTL_PATH, read_sysctl, stats_state

pytestmark = [pytest.mark.kernel, pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = str(Path(__file__).resolve().parents[2])

HOLDER = """
import sys
from otel_bpf.kernel.stats import StatsSwitch
StatsSwitch().acquire()
print("held", flush=True)
sys.stdin.read()
"""

FALLBACK_USER = """
import sys, time
from otel_bpf.kernel import stats
from otel_bpf.kernel.errors import unsupported_command

def missing():
    raise unsupported_command("BPF_ENABLE_STATS")

stats._enable_stats_fd = missing  # as on a kernel before 5.8
with stats.stats_enabled(allow_sysctl=True):
    print("on" if stats.read_sysctl() else "off", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def original_sysctl() -> Iterator[str]:
    """The sysctl's text before the test, written back afterwards no matter what."""
    with open(SYSCTL_PATH) as f:
        before = f.read()
    try:
        yield before.strip()
    finally:
        with open(SYSCTL_PATH, "w") as f:
            f.write(before)


def set_sysctl(value: str) -> None:
    with open(SYSCTL_PATH, "w") as f:
        f.write(value + "\n")


def run_briefly() -> None:
    proc = run_cli(["--json", "--count", "2", "--interval", "0.2", "--exporter", "none"], 60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_another_holder_keeps_stats_on_after_we_exit(original_sysctl: str) -> None:
    set_sysctl("0")
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": ROOT},
    ) as holder:  # fmt: skip
        assert holder.stdout is not None and holder.stdin is not None
        try:
            assert holder.stdout.readline().strip() == "held"
            run_briefly()
            assert holder.pid in stats_holder_pids(), "our exit took the other holder's stats"
            state = stats_state()
            assert state.enabled and state.others and not state.ours
        finally:
            holder.stdin.close()
            holder.wait(30)
    assert read_sysctl() is False


def test_sysctl_already_on_stays_on_after_we_exit(original_sysctl: str) -> None:
    set_sysctl("1")
    run_briefly()
    assert read_sysctl() is True


@pytest.mark.parametrize("before", ["0", "1"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sysctl_fallback_restored_when_terminated(
    original_sysctl: str, before: str, signum: signal.Signals
) -> None:
    set_sysctl(before)
    with subprocess.Popen(
        [sys.executable, "-c", FALLBACK_USER], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        # The behaviour under test is the signal's default action; nohup (SIGHUP) or a shell's
        # background job would hand the child an ignored signal instead.
        preexec_fn=functools.partial(signal.signal, signum, signal.SIG_DFL),
    ) as user:  # fmt: skip
        assert user.stdout is not None
        assert user.stdout.readline().strip() == "on"
        assert read_sysctl() is True
        user.send_signal(signum)
        assert user.wait(30) == -signum  # still ended by the signal
    assert read_sysctl() is (before == "1")


TWO_FALLBACK_SWITCHES = """
import time
from otel_bpf.kernel import stats
from otel_bpf.kernel.errors import unsupported_command

def missing():
    raise unsupported_command("BPF_ENABLE_STATS")

stats._enable_stats_fd = missing  # as on a kernel before 5.8
with stats.stats_enabled(allow_sysctl=True):  # the first switch installs its handlers
    pass
with stats.stats_enabled(allow_sysctl=True):  # a second switch sets the sysctl again
    print("on" if stats.read_sysctl() else "off", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sysctl_of_a_later_switch_restored_when_terminated(
    original_sysctl: str, signum: signal.Signals
) -> None:
    set_sysctl("0")
    with subprocess.Popen(
        [sys.executable, "-c", TWO_FALLBACK_SWITCHES], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
        preexec_fn=functools.partial(signal.signal, signum, signal.SIG_DFL),
    ) as user:  # fmt: skip
        assert user.stdout is not None
        assert user.stdout.readline().strip() == "on"
        user.send_signal(signum)
        assert user.wait(30) == -signum
    assert read_sysctl() is False
