"""The live view's own history: per program, the three charted figures of the last passes.

The detail view charts three figures of one program over the last ``capacity`` passes and,
for a program that just went away, shows its last reading.  Keeping whole snapshots for that
costs about 450 bytes per program per pass (a record and a sample each); this keeps 24 bytes
per program per pass, in one ``array('d')`` per program (NaN where a figure was unknown), the
pass times once per pass, and a reference to each program's newest sample.  A program's
values start at its first pass in the window, so programs that come and go cost only the
passes they were there.
"""

from __future__ import annotations

import math
from array import array
from collections import deque
from collections.abc import Iterable

from otel_bpf.sampler import DEFAULT_HISTORY
from otel_bpf.snapshot import ProgramSample, Snapshot

FIGURES: tuple[str, ...] = ("period_avg_runtime_ns", "events_per_sec", "cpu_percent")
"""The :class:`~otel_bpf.snapshot.ProgramSample` attributes kept, in this order."""

_WIDTH = len(FIGURES)
_NAN = math.nan


class _Track:
    """One program's figures: ``values`` holds ``_WIDTH`` floats per pass from pass
    ``first`` to pass ``end``, a ring once it holds ``capacity`` passes (pass ``p`` at
    ``(p - first) % capacity``)."""

    __slots__ = ("end", "first", "last", "values")

    def __init__(self, first: int, sample: ProgramSample) -> None:
        self.first = first
        self.end = first - 1
        self.last = sample
        self.values = array("d")


class ChartHistory:
    """The charted figures of every program over the last ``capacity`` passes.

    Fed with :meth:`add` (one snapshot per pass, in order) or :meth:`catch_up` (whatever of
    the given snapshots is newer than the newest added).  Programs that went away are kept
    until their last pass leaves the window, as the snapshots of that window would keep them.
    """

    def __init__(self, capacity: int = DEFAULT_HISTORY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity!r}")
        self.capacity = capacity
        self._passes = 0
        """Passes added so far; the newest is ``_passes - 1``."""
        self._seq: int | None = None
        """``seq`` of the newest snapshot added."""
        self._monotonic = array("d", [_NAN]) * capacity
        self._wall = array("d", [_NAN]) * capacity
        self._tracks: dict[int, _Track] = {}
        self._present: set[int] = set()
        """Programs of the newest pass."""
        self._gone: deque[tuple[int, set[int]]] = deque()
        """(last pass they were in, programs) for programs that went away, oldest first."""

    @classmethod
    def of(cls, snapshots: Iterable[Snapshot], capacity: int | None = None) -> ChartHistory:
        """The history of ``snapshots`` (oldest first); by default exactly as long as they."""
        snapshots = tuple(snapshots)
        history = cls(capacity or max(len(snapshots), 1))
        for snapshot in snapshots:
            history.add(snapshot)
        return history

    # -- feeding -----------------------------------------------------------------------

    def catch_up(self, snapshots: Iterable[Snapshot]) -> None:
        """Add the snapshots newer than the newest added (the sampler's short history, on
        each frame: a pass the view did not draw is still charted)."""
        for snapshot in snapshots:
            if self._seq is None or snapshot.seq > self._seq:
                self.add(snapshot)

    def add(self, snapshot: Snapshot) -> None:
        """Record one pass."""
        now = self._passes
        cap = self.capacity
        slot = now % cap
        self._monotonic[slot] = snapshot.monotonic
        self._wall[slot] = snapshot.wall_time
        tracks = self._tracks
        present: set[int] = set()
        for sample in snapshot.programs:
            prog_id = sample.program.id
            present.add(prog_id)
            track = tracks.get(prog_id)
            if track is None:
                track = tracks[prog_id] = _Track(now, sample)
            elif track.end < now - 1:  # absent from the passes in between (a failed read)
                for at in range(track.end + 1, now):
                    self._put(track, at, _NAN, _NAN, _NAN)
            a, b, c = sample.period_avg_runtime_ns, sample.events_per_sec, sample.cpu_percent
            self._put(
                track,
                now,
                _NAN if a is None else a,
                _NAN if b is None else b,
                _NAN if c is None else c,
            )
            track.last = sample
        went = self._present - present
        if went:
            self._gone.append((now - 1, went))
        self._present = present
        self._passes = now + 1
        self._seq = snapshot.seq
        self._forget(now - cap + 1)

    def _put(self, track: _Track, at: int, a: float, b: float, c: float) -> None:
        """Pass ``at``'s figures of ``track`` (``at`` is ``track.end + 1``)."""
        values = track.values
        index = (at - track.first) % self.capacity * _WIDTH
        if index == len(values):  # still filling up
            values.append(a)
            values.append(b)
            values.append(c)
        else:  # a full ring: over the oldest pass
            values[index] = a
            values[index + 1] = b
            values[index + 2] = c
        track.end = at

    def _forget(self, oldest: int) -> None:
        """Drop the programs whose last pass is older than pass ``oldest``."""
        gone = self._gone
        while gone and gone[0][0] < oldest:
            _, ids = gone.popleft()
            for prog_id in ids:
                track = self._tracks.get(prog_id)
                if track is not None and track.end < oldest:
                    del self._tracks[prog_id]

    # -- reading -----------------------------------------------------------------------

    def __len__(self) -> int:
        """Passes in the window."""
        return min(self._passes, self.capacity)

    @property
    def span(self) -> float:
        """Monotonic seconds from the oldest pass in the window to the newest (0 when
        there are fewer than two)."""
        if len(self) < 2:
            return 0.0
        newest = self._passes - 1
        oldest = newest - len(self) + 1
        cap = self.capacity
        return self._monotonic[newest % cap] - self._monotonic[oldest % cap]

    @property
    def programs(self) -> int:
        """Programs with a pass in the window (loaded now or gone within it)."""
        return len(self._tracks)

    def series(self, prog_id: int, figure: str) -> list[float | None]:
        """``figure`` (one of :data:`FIGURES`) of ``prog_id`` for each pass in the window,
        oldest first; None where it was unknown or the program was not there."""
        column = FIGURES.index(figure)
        newest = self._passes - 1
        oldest = newest - len(self) + 1
        track = self._tracks.get(prog_id)
        if track is None:
            return [None] * len(self)
        out: list[float | None] = []
        cap = self.capacity
        values = track.values
        held_from = max(track.first, track.end - cap + 1)
        for at in range(oldest, newest + 1):
            if held_from <= at <= track.end:
                value = values[(at - track.first) % cap * _WIDTH + column]
                out.append(None if math.isnan(value) else value)
            else:
                out.append(None)
        return out

    def last_seen(self, prog_id: int) -> tuple[ProgramSample, float] | None:
        """The newest sample of ``prog_id`` in the window and the wall-clock time of its
        pass; None when it had none."""
        track = self._tracks.get(prog_id)
        if track is None:
            return None
        return track.last, self._wall[track.end % self.capacity]
