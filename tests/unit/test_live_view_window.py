"""The live view charts its own window of passes, not the sampler's (short) history."""

from __future__ import annotations

import anyio
from live_samples import steady

from otel_bpf.kernel.source import SourceOptions
from otel_bpf.live.app import LiveView
from otel_bpf.live.options import LiveOptions
from otel_bpf.live.render_detail import render_detail
from otel_bpf.live.state import Mode, ViewState
from otel_bpf.snapshot import Snapshot


class ShortSampler:
    """What :class:`LiveView` reads of a sampler that keeps only its last 4 snapshots."""

    interval = 1.0
    options = SourceOptions()

    def __init__(self) -> None:
        self.history: tuple[Snapshot, ...] = ()

    @property
    def latest(self) -> Snapshot | None:
        return self.history[-1] if self.history else None


class FixedSize:
    def size(self) -> tuple[int, int]:
        return 120, 40


def test_the_view_charts_every_pass_when_the_sampler_keeps_only_a_few() -> None:
    snaps = steady(3, passes=30)

    async def frames() -> list[str]:
        sampler = ShortSampler()
        view = LiveView(sampler, LiveOptions(), FixedSize())  # type: ignore[arg-type]
        for i in range(len(snaps)):
            sampler.history = tuple(snaps[max(0, i - 3) : i + 1])
            if i % 3 == 0:  # frames drawn now and then only: no pass is lost in between
                view.context()
        ctx = view.context()
        return [
            line.text.rstrip() for line in render_detail(ctx, ViewState(Mode.DETAIL, detail_id=2))
        ]

    lines = anyio.run(frames)
    assert "Charts: last 30 samples (29s), newest on the right" in lines
    # Events/s of program 2: a bar for each of the 29 passes with a rate (the first has none).
    title = next(i for i, text in enumerate(lines) if text.startswith("Events/s"))
    bottom = next(i for i in range(title + 1, len(lines)) if lines[i].lstrip().startswith("0|"))
    assert len(lines[bottom].split("|", 1)[1].strip()) == 29
