"""Pacing: send packets for each stream at its own rate, in batches per clock tick.

The driver is plain logic over a monotonic clock and send callables, so it runs in the
worker process and in unit tests alike.  Each stream keeps a baseline (time, count) and
on every :meth:`TrafficDriver.step` sends whatever brings its count up to
``rate * elapsed``; a short stall is caught up on the next tick, a long one (more than
``max_catchup`` seconds behind) is forgiven rather than sent as a burst.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

DEFAULT_TICK = 0.01
DEFAULT_MAX_CATCHUP = 0.5
# No rate is accepted above this: at 10 ms ticks it is already 1000 sends per tick.
MAX_RATE = 100_000.0


@dataclass
class Stream:
    """One paced stream: ``send()`` makes its program run once."""

    name: str
    send: Callable[[], None]
    rate: float = 0.0
    sent: int = 0
    failed: int = 0
    base_time: float = 0.0
    base_count: int = 0
    last_error: str = field(default="", repr=False)


def check_rate(name: str, rate: float) -> float:
    """``rate`` as a float in [0, MAX_RATE]; ValueError otherwise."""
    value = float(rate)
    if not (0.0 <= value <= MAX_RATE) or math.isnan(value):
        raise ValueError(f"rate for {name} must be between 0 and {MAX_RATE:g} runs/s, not {rate}")
    return value


class TrafficDriver:
    """Drives several :class:`Stream` objects, each at its own rate (sends per second)."""

    def __init__(
        self,
        streams: Mapping[str, Callable[[], None]],
        rates: Mapping[str, float],
        *,
        now: float,
        tick: float = DEFAULT_TICK,
        max_catchup: float = DEFAULT_MAX_CATCHUP,
    ) -> None:
        self.tick = tick
        self.max_catchup = max_catchup
        self._streams = {name: Stream(name, send) for name, send in streams.items()}
        self.set_rates(rates, now=now)

    def set_rates(self, rates: Mapping[str, float], *, now: float) -> None:
        """Change the rates of the named streams from ``now`` on (others keep theirs)."""
        checked = {}
        for name, rate in rates.items():
            if name not in self._streams:
                raise ValueError(f"no stream called {name!r}")
            checked[name] = check_rate(name, rate)
        for name, rate in checked.items():
            s = self._streams[name]
            s.rate = rate
            s.base_time = now
            s.base_count = s.sent

    def rates(self) -> dict[str, float]:
        """The current rate of every stream."""
        return {name: s.rate for name, s in self._streams.items()}

    def sent(self) -> dict[str, int]:
        """Packets sent so far per stream (successful sends only)."""
        return {name: s.sent for name, s in self._streams.items()}

    def failed(self) -> dict[str, int]:
        """Sends that raised OSError, per stream."""
        return {name: s.failed for name, s in self._streams.items()}

    def step(self, now: float) -> int:
        """Send what every stream owes at ``now``; return the number of packets sent."""
        total = 0
        for s in self._streams.values():
            if s.rate <= 0.0:
                continue
            # The epsilon keeps 100/s * 0.1 s at 10 sends, not 9 by float rounding.
            due = s.base_count + int(s.rate * (now - s.base_time) + 1e-6)
            owed = due - s.sent
            limit = max(1, int(s.rate * self.max_catchup))
            if owed > limit:
                # Far behind (the process was stopped or starved): forgive the backlog
                # and carry on at the rate from here.
                s.base_time = now - limit / s.rate
                s.base_count = s.sent
                owed = limit
            for _ in range(owed):
                try:
                    s.send()
                except OSError as err:
                    # Counted and retried on the next tick; a persistent error shows as a
                    # rate below the target rather than as a crash of the workload.
                    s.failed += 1
                    s.last_error = err.strerror or str(err)
                    break
                s.sent += 1
                total += 1
        return total

    def next_step(self, now: float) -> float:
        """When to call :meth:`step` next: the next tick boundary after ``now``."""
        nxt = (math.floor(now / self.tick) + 1) * self.tick
        # Float rounding can put the product on or before ``now``; never return the past.
        return nxt if nxt > now else nxt + self.tick
