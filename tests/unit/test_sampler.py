"""The sampler loop, with a synthetic program source: threads, timing, history, fan-out."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio
import pytest
from fake_source import CallSource
from socket_filter_records import socket_filter as prog
from trio.testing import MockClock

from otel_bpf.records import ProgramRecord, StatsState
from otel_bpf.sampler import Sampler, validate_interval
from otel_bpf.snapshot import Snapshot

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@dataclass
class Result:
    records: list[ProgramRecord]
    errors: list[str] = field(default_factory=list)


class Source:
    """Program 1 runs 100 times per call; records which threads the passes ran in.

    A pass takes ``delay`` seconds: slept for real, or jumped on ``clock`` when one is given.
    """

    def __init__(self, delay: float = 0.0, clock: MockClock | None = None) -> None:
        self.calls = 0
        self.threads: set[int] = set()
        self.active = 0
        self.max_active = 0
        self.delay = delay
        self.clock = clock
        self._lock = threading.Lock()

    def __call__(self) -> Result:
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls += 1
            n = self.calls
        self.threads.add(threading.get_ident())
        if self.clock is not None:
            self.clock.jump(self.delay)
        elif self.delay:
            time.sleep(self.delay)
        with self._lock:
            self.active -= 1
        return Result([prog(1, run_cnt=100 * n, run_time_ns=5000 * n)])


def sampler(source: Source, interval: float = 0.1, history: int = 60) -> Sampler:
    return Sampler(
        interval=interval,
        history=history,
        source=CallSource(source),
        stats_state=lambda: StatsState(ours=True, sysctl=False, others=False),
        online_cpus=lambda: 2,
        clock=source.clock.current_time if source.clock is not None else time.monotonic,
    )


def virtual_time() -> MockClock:
    """A clock for trio that jumps to the next deadline as soon as every task waits.

    The schedule (``anyio.current_time``) and the snapshots' stamps both read it, so timing
    is checked exactly and without sleeping.  No ``fail_after`` in such tests: with nothing
    else to wait for, the clock would jump straight to its deadline (pytest-timeout guards).
    """
    return MockClock(autojump_threshold=0)


def run_on_virtual_time(clock: MockClock, test: Callable[[], Awaitable[None]]) -> None:
    anyio.run(test, backend="trio", backend_options={"clock": clock})


@pytest.mark.parametrize("bad", [0.0, 0.09, 3600.5, -1, float("nan"), float("inf"), "x", None])
def test_interval_out_of_range_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="interval"):
        Sampler(interval=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [0.1, 1, 3600])
def test_interval_bounds_are_accepted(good: float) -> None:
    assert validate_interval(good) == float(good)
    assert Sampler(interval=good).interval == float(good)


def test_history_below_1_is_refused() -> None:
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="history"):
            Sampler(history=bad)  # type: ignore[arg-type]
    assert Sampler(history=1).history == ()


async def test_first_sample_has_no_rates_then_rates_follow() -> None:
    src = Source()
    s = sampler(src)
    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        first = s.latest
        assert first is not None and first.seq == 1 and first.elapsed is None
        p = first.programs[0]
        assert p.events_per_sec is None and p.cpu_percent is None
        assert p.period_avg_runtime_ns is None and p.total_avg_runtime_ns == 50.0
        second = await s.wait_next(1)
        tg.cancel_scope.cancel()
    assert second.seq == 2
    assert second.elapsed is not None and 0.05 < second.elapsed < 1.0
    q = second.programs[0]
    assert q.events_per_sec == pytest.approx(100 / second.elapsed)
    assert q.period_avg_runtime_ns == 50.0
    assert q.cpu_utilization == pytest.approx(5000 / (second.elapsed * 1e9) / 2)
    assert second.stats.ours and second.online_cpus == 2


async def test_passes_run_in_worker_threads_one_at_a_time() -> None:
    # Each pass takes longer than the interval: passes must still never overlap.
    src = Source(delay=0.15)
    s = sampler(src)
    loop_thread = threading.get_ident()
    async with anyio.create_task_group() as tg:
        await tg.start(s.run)
        for _ in range(3):
            s.request_refresh()
            await anyio.sleep(0.05)
        # At least three completed passes, however the refreshes fell against the passes.
        with anyio.fail_after(5):
            latest = s.latest
            assert latest is not None
            while latest.seq < 3:
                latest = await s.wait_next(latest.seq)
        tg.cancel_scope.cancel()
    assert loop_thread not in src.threads
    assert src.max_active == 1
    assert src.calls >= 3


def test_schedule_does_not_drift() -> None:
    # Each pass takes 40 ms of a 100 ms interval.  A loop that sleeps one interval after each
    # pass would take 10 x 140 ms for ten ticks; the drift-free schedule takes 10 x 100 ms.
    clock = virtual_time()
    s = sampler(Source(delay=0.04, clock=clock), interval=0.1, history=60)
    seen: list[Snapshot] = []

    async def ten_ticks() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(s.run)
            start = s.latest
            assert start is not None
            seen.extend([start, await s.wait_next(start.seq + 9)])
            tg.cancel_scope.cancel()

    run_on_virtual_time(clock, ten_ticks)
    start, end = seen
    assert end.seq == start.seq + 10
    # The schedule starts when the first pass ends (0.04 s): tick n is due at 0.04 + n x 0.1 s
    # and its pass is stamped 0.04 s later, so the first gap is 0.14 s and every later one
    # exactly 0.1 s: ten ticks span 1.04 s (a drifting loop: 1.4 s).
    passes = [snap.monotonic for snap in s.history if start.seq <= snap.seq <= end.seq]
    gaps = [b - a for a, b in zip(passes, passes[1:], strict=False)]
    assert gaps == pytest.approx([0.14] + [0.1] * 9)
    assert end.monotonic - start.monotonic == pytest.approx(1.04)


def test_overrun_skips_ticks_instead_of_bursting() -> None:
    clock = virtual_time()
    s = sampler(Source(delay=0.35, clock=clock), interval=0.1)
    seen: list[Snapshot] = []

    async def three_passes() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(s.run)
            a = s.latest
            assert a is not None
            b = await s.wait_next(a.seq)
            seen.extend([a, b, await s.wait_next(b.seq)])
            tg.cancel_scope.cancel()

    run_on_virtual_time(clock, three_passes)
    a, b, c = seen
    # Pass 1 ends at 0.35 s, so tick 1 is due at 0.45 s; pass 2 ends at 0.80 s, past the ticks
    # due at 0.55, 0.65 and 0.75 s: they are skipped and pass 3 starts at the next tick
    # boundary, 0.85 s, instead of at once (a burst would end it at 1.15 s, 0.35 s later).
    assert a.monotonic == pytest.approx(0.35)
    assert b.elapsed == pytest.approx(0.45) and b.monotonic == pytest.approx(0.80)
    assert c.elapsed == pytest.approx(0.40) and c.monotonic == pytest.approx(1.20)


async def test_history_is_bounded_and_ordered() -> None:
    src = Source()
    s = sampler(src, interval=0.1, history=60)
    for _ in range(75):
        s.sample_once()
    hist = s.history
    assert len(hist) == 60
    assert [h.seq for h in hist] == list(range(16, 76))


async def test_slow_subscriber_gets_the_newest_never_a_backlog() -> None:
    src = Source()
    s = sampler(src, interval=0.1)
    fast: list[int] = []
    slow: list[int] = []

    async def consume(into: list[int], pause: float, sub_ready: anyio.Event) -> None:
        with s.subscribe() as sub:
            sub_ready.set()
            async for snap in sub:
                into.append(snap.seq)
                await anyio.sleep(pause)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(s.run)
            r1, r2 = anyio.Event(), anyio.Event()
            tg.start_soon(consume, fast, 0.0, r1)
            tg.start_soon(consume, slow, 0.45, r2)
            await r1.wait()
            await r2.wait()
            start = s.latest
            assert start is not None
            await s.wait_next(start.seq + 12)
            await anyio.sleep(0.05)
            last = s.latest
            tg.cancel_scope.cancel()
    assert last is not None
    # The fast consumer saw every snapshot, in order.
    assert fast == list(range(fast[0], fast[0] + len(fast)))
    assert len(fast) >= 12
    # The slow one skipped: each value it got was the newest at the time it asked.
    assert len(slow) <= 5
    assert all(b - a >= 2 for a, b in zip(slow[1:], slow[2:], strict=False))
    assert len(fast) > 2 * len(slow)
    assert slow == sorted(set(slow))


async def test_many_subscribers_share_one_value() -> None:
    src = Source()
    s = sampler(src, interval=0.1)
    got: dict[int, int] = {}

    async def one(i: int) -> None:
        with s.subscribe() as sub:
            snap = await sub.next()
            got[i] = snap.seq

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(s.run)
            for i in range(50):
                tg.start_soon(one, i)
            await anyio.wait_all_tasks_blocked()
            latest = s.latest
            assert latest is not None
            await s.wait_next(latest.seq)
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()
    assert len(set(got.values())) == 1


async def test_iteration_ends_when_the_sampler_stops() -> None:
    src = Source()
    s = sampler(src, interval=0.1)
    seen: list[int] = []
    ended = anyio.Event()

    async def follow() -> None:
        async with s.subscribe() as sub:
            seen.extend([snap.seq async for snap in sub])
        ended.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as outer:
            async with anyio.create_task_group() as tg:
                await tg.start(s.run)
                outer.start_soon(follow)
                await s.wait_next(2)
                tg.cancel_scope.cancel()
            # Only the sampler was cancelled: the follower's loop ends by itself.
            await ended.wait()
    assert seen and seen == sorted(seen)


async def test_first_pass_error_propagates_later_ones_are_survived() -> None:
    calls = 0

    def flaky() -> Result:
        nonlocal calls
        calls += 1
        if calls == 1 or calls in (3, 4):
            raise PermissionError("no CAP_BPF")
        return Result([prog(1, run_cnt=calls)])

    s = Sampler(
        interval=0.1,
        source=CallSource(flaky),
        stats_state=lambda: StatsState(False, False, False),
        online_cpus=lambda: 1,
    )
    with pytest.raises(PermissionError):
        await s.run()
    assert not s.running
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(s.run)
            snap = await s.wait_next(1)
            tg.cancel_scope.cancel()
    assert calls >= 5 and snap.seq == 2


async def test_run_twice_at_once_is_refused() -> None:
    s = sampler(Source())
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(s.run)
            with pytest.raises(RuntimeError, match="already running"):
                await s.run()
            tg.cancel_scope.cancel()


async def test_request_refresh_runs_a_pass_early() -> None:
    src = Source()
    s = sampler(src, interval=30)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(s.run)
            s.request_refresh()
            snap = await s.wait_next(1)
            tg.cancel_scope.cancel()
    assert snap.elapsed is not None and snap.elapsed < 5


def test_a_refresh_does_not_move_the_regular_schedule() -> None:
    clock = virtual_time()
    s = sampler(Source(clock=clock), interval=0.6)
    seen: list[Snapshot] = []

    async def refresh_between_ticks() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(s.run)
            first = s.latest
            assert first is not None
            await anyio.sleep(0.15)
            s.request_refresh()
            early = await s.wait_next(first.seq)
            seen.extend([first, early, await s.wait_next(early.seq)])
            tg.cancel_scope.cancel()

    run_on_virtual_time(clock, refresh_between_ticks)
    first, early, regular = seen
    assert early.monotonic - first.monotonic == pytest.approx(0.15)
    # The regular tick still comes 0.6 s after the first pass, not 0.6 s after the refresh.
    assert regular.monotonic - first.monotonic == pytest.approx(0.6)


async def test_idle_subscribers_cost_no_memory_per_published_value() -> None:
    import tracemalloc

    from otel_bpf.broadcast import Broadcast

    cast: Broadcast[bytes] = Broadcast()
    subs = [cast.subscribe() for _ in range(100)]  # never read
    tracemalloc.start()
    try:
        for _ in range(100):
            cast.publish(bytes(1000))
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(10_000):
            cast.publish(bytes(1000))
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    # 10,000 values of 1 kB to 100 subscribers: a buffering fan-out would hold 10 MB or more.
    assert after - before < 16_000, after - before
    got = await subs[0].next()
    assert len(got) == 1000 and subs[0].skipped == 10_099
