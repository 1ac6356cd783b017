"""The stats switch: a refcounted BPF_ENABLE_STATS fd, the sysctl fallback, the state query."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from kernel_progs import counting_filter

from otel_bpf.kernel import stats
from otel_bpf.kernel.errors import BpfUnsupportedError, unsupported_command
from otel_bpf.kernel.owners import STATS_FD_TARGET, fd_targets, stats_holders
from otel_bpf.kernel.programs import read_all
from otel_bpf.kernel.stats import StatsSwitch, read_sysctl, stats_enabled, stats_state

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stats_fds() -> list[str]:
    return [fd for fd, target in fd_targets(os.getpid()) if target == STATS_FD_TARGET]


@pytest.fixture(autouse=True)
def switch_released() -> None:
    # Other code in this process (a plugin test) must not be holding a switch.
    if stats.fds_held():
        pytest.fail(f"stats switches held by an earlier test ({stats.fds_held()} fds)")


def test_switches_are_independent_and_each_holds_one_fd() -> None:
    first, second = StatsSwitch(), StatsSwitch()
    assert first is not second
    first.acquire()
    try:
        (fd,) = stats_fds()
        assert first.fd_held and not second.held and not second.fd_held
        first.acquire()  # nested on one switch: still its one fd
        assert stats_fds() == [fd] and first.count == 2
        first.release()
        second.acquire()
        try:
            assert len(stats_fds()) == 2 and second.fd_held and stats.fds_held() == 2
        finally:
            second.release()
        assert stats_fds() == [fd] and not second.fd_held and first.fd_held
        assert stats_state().ours
    finally:
        first.release()
    assert stats_fds() == [] and stats.fds_held() == 0 and not stats_state().ours
    for _ in range(3):  # each acquire/release pair opens and closes a fd of its own
        with stats_enabled(second):
            assert len(stats_fds()) == 1
        assert stats_fds() == []


def test_fd_appears_and_disappears() -> None:
    assert stats_fds() == []
    switch = StatsSwitch()
    switch.acquire()
    try:
        assert len(stats_fds()) == 1
        assert switch.held and switch.fd_held
        state = stats_state()
        assert state.ours and state.enabled and state.describe() == "on"
    finally:
        switch.release()
    assert stats_fds() == []
    assert not switch.held and not stats_state().ours


def test_nested_users_keep_the_fd_until_the_last_leaves() -> None:
    with stats_enabled() as outer:
        (fd,) = stats_fds()
        with stats_enabled(outer) as inner:
            assert stats_fds() == [fd] and inner.count == 2
        assert stats_fds() == [fd]
    assert stats_fds() == []


def test_release_without_acquire_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        StatsSwitch().release()


def test_threads_racing_leave_a_consistent_count() -> None:
    switch = StatsSwitch()
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def worker() -> None:
        try:
            start.wait(10)
            for _ in range(150):
                switch.acquire()
                if len(stats_fds()) != 1:
                    raise AssertionError("stats fd missing while acquired")
                switch.release()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert switch.count == 0 and not switch.held
    assert stats_fds() == []


HOLDER = """
import sys
from otel_bpf.kernel.stats import StatsSwitch
StatsSwitch().acquire()
print("held", flush=True)
sys.stdin.read()
"""


def test_state_sees_another_process_holding_stats() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    ) as child:
        assert child.stdout is not None and child.stdin is not None
        try:
            assert child.stdout.readline().strip() == "held"
            assert child.pid in stats_holders(exclude_pid=os.getpid())
            state = stats_state()
            assert state.others and not state.ours and state.enabled
            assert state.describe() == "on (by another process)"
        finally:
            child.stdin.close()
            assert child.wait(30) == 0
    # The kernel dropped the child's fd with the child.
    assert child.pid not in stats_holders()


def _wait_until_nobody_counts(deadline: float) -> None:
    while stats_state().enabled:
        if time.monotonic() > deadline:
            state = stats_state()
            pytest.skip(f"another holder keeps BPF stats on for the whole host ({state})")
        time.sleep(0.2)


@pytest.mark.timeout(200)
def test_counters_freeze_while_off_and_grow_while_on() -> None:
    with counting_filter() as filt:

        def run_cnt() -> int:
            return next(r.run_cnt for r in read_all().records if r.id == filt.prog_id)

        # Stats are global to the host: wait for a quiet moment when nobody else holds them.
        deadline = time.monotonic() + 90
        for _attempt in range(5):
            _wait_until_nobody_counts(deadline)
            with stats_enabled():
                filt.send(5)
            frozen = run_cnt()
            assert frozen >= 5  # more if another process turned stats on too
            filt.send(20)
            if stats_state().enabled:
                continue  # another process switched stats on meanwhile: measure again
            off_delta = run_cnt() - frozen
            with stats_enabled():
                filt.send(10)
                on_delta = run_cnt() - frozen - off_delta
            if stats_state().enabled:
                continue
            assert off_delta == 0
            assert on_delta == 10
            return
        pytest.fail("other processes kept turning BPF stats on; could not measure")


def _no_enable_stats() -> int:
    raise unsupported_command("BPF_ENABLE_STATS")


def test_sysctl_fallback_restores_the_previous_value(monkeypatch: pytest.MonkeyPatch) -> None:
    if read_sysctl():
        pytest.skip("kernel.bpf_stats_enabled is already 1 on this host")
    monkeypatch.setattr(stats, "_enable_stats_fd", _no_enable_stats)
    switch = StatsSwitch()
    with pytest.raises(BpfUnsupportedError, match="lacks BPF_ENABLE_STATS"):
        switch.acquire()
    assert not switch.held
    try:
        with stats_enabled(switch, allow_sysctl=True):
            assert read_sysctl() is True
            with stats_enabled(switch, allow_sysctl=True):
                assert read_sysctl() is True
            assert read_sysctl() is True
            state = stats_state()
            assert state.sysctl and not state.ours and state.enabled
            assert stats_fds() == []
        assert read_sysctl() is False
        with pytest.raises(ZeroDivisionError), stats_enabled(allow_sysctl=True):
            assert read_sysctl() is True
            1 / 0  # noqa: B018
        assert read_sysctl() is False
    finally:
        stats._write_sysctl(False)


def test_sysctl_fallback_never_turns_off_what_was_on(monkeypatch: pytest.MonkeyPatch) -> None:
    if read_sysctl():
        pytest.skip("kernel.bpf_stats_enabled is already 1 on this host")
    monkeypatch.setattr(stats, "_enable_stats_fd", _no_enable_stats)
    stats._write_sysctl(True)
    try:
        with stats_enabled(allow_sysctl=True):
            assert read_sysctl() is True
        assert read_sysctl() is True
    finally:
        stats._write_sysctl(False)


EXITS_HOLDING = """
from otel_bpf.kernel import stats
from otel_bpf.kernel.errors import unsupported_command

def missing():
    raise unsupported_command("BPF_ENABLE_STATS")

stats._enable_stats_fd = missing
stats.StatsSwitch().acquire(allow_sysctl=True)
assert stats.read_sysctl() is True
print("on", flush=True)
"""


def test_sysctl_fallback_is_restored_at_exit() -> None:
    if read_sysctl():
        pytest.skip("kernel.bpf_stats_enabled is already 1 on this host")
    try:
        proc = subprocess.run(
            [sys.executable, "-c", EXITS_HOLDING],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": ROOT},
            check=False,
        )
        assert proc.returncode == 0 and proc.stdout == "on\n", proc.stderr
        assert read_sysctl() is False
    finally:
        stats._write_sysctl(False)
