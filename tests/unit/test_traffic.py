"""Pacing of the demo traffic driver, on a fake clock."""

from __future__ import annotations

import errno

import pytest

from otel_bpf.demo.traffic import TrafficDriver


class Counter:
    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def __call__(self) -> None:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise OSError(errno.ENOBUFS, "No buffer space available")
        self.calls += 1


def run(driver: TrafficDriver, start: float, seconds: float) -> float:
    now = start
    while now < start + seconds:
        now = driver.next_step(now)
        driver.step(now)
    return now


def test_each_stream_gets_its_own_rate() -> None:
    a, b = Counter(), Counter()
    d = TrafficDriver({"a": a, "b": b}, {"a": 300.0, "b": 1234.0}, now=100.0)
    run(d, 100.0, 3.0)
    assert abs(a.calls - 900) <= 3
    assert abs(b.calls - 3702) <= 13
    assert d.sent() == {"a": a.calls, "b": b.calls}


def test_rate_zero_pauses_and_resuming_does_not_burst() -> None:
    a = Counter()
    d = TrafficDriver({"a": a}, {"a": 100.0}, now=0.0)
    end = run(d, 0.0, 1.0)
    d.set_rates({"a": 0.0}, now=end)
    end2 = run(d, end, 2.0)
    paused = a.calls
    d.step(end2 + 5.0)
    assert a.calls == paused
    d.set_rates({"a": 100.0}, now=end2)
    d.step(end2 + 0.05)
    assert a.calls - paused == 5


def test_short_stall_is_caught_up_long_one_forgiven() -> None:
    a = Counter()
    d = TrafficDriver({"a": a}, {"a": 100.0}, now=0.0, max_catchup=0.5)
    d.step(0.3)
    assert a.calls == 30
    d.step(10.0)  # 9.7 s late: at most half a second's worth is sent at once
    assert a.calls == 80
    d.step(10.1)
    assert a.calls == 90


def test_send_errors_are_counted_not_raised() -> None:
    a = Counter(fail_after=10)
    d = TrafficDriver({"a": a}, {"a": 1000.0}, now=0.0)
    d.step(0.05)
    assert d.sent() == {"a": 10}
    assert d.failed() == {"a": 1}


@pytest.mark.parametrize("rate", [-1.0, float("nan"), 1e9])
def test_bad_rates_are_refused(rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        TrafficDriver({"a": Counter()}, {"a": rate}, now=0.0)


def test_unknown_stream_is_refused() -> None:
    with pytest.raises(ValueError, match="no stream"):
        TrafficDriver({"a": Counter()}, {"b": 1.0}, now=0.0)


def test_next_step_is_the_next_tick_boundary() -> None:
    d = TrafficDriver({}, {}, now=0.0, tick=0.01)
    assert d.next_step(1.004) == pytest.approx(1.01)
    assert d.next_step(1.01) > 1.01
