"""What one frame is drawn from: the data, the terminal size and the glyphs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from otel_bpf.live.history import ChartHistory
from otel_bpf.live.options import Glyphs
from otel_bpf.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class RenderContext:
    """Inputs of a frame besides the view state (everything already read; no I/O)."""

    snapshot: Snapshot | None
    """The newest snapshot; None until the first pass is published."""
    history: ChartHistory | Sequence[Snapshot]
    """The charts' window: the view's :class:`ChartHistory`, or snapshots (oldest first,
    turned into one that spans exactly them)."""
    width: int
    height: int
    glyphs: Glyphs = Glyphs.ASCII
    host: str = ""
    kernel: str = ""
    interval: float = 1.0
    now: float = 0.0
    """Wall-clock time of the frame (for ages)."""
    per_cpu: bool = False
    """The sampler reads per-CPU counters: the detail view shows the per-CPU split and the
    table offers the Busiest CPU % column."""

    def __post_init__(self) -> None:
        if not isinstance(self.history, ChartHistory):
            object.__setattr__(self, "history", ChartHistory.of(self.history))

    @property
    def charts(self) -> ChartHistory:
        """:attr:`history` as a :class:`ChartHistory` (it always is one once built)."""
        assert isinstance(self.history, ChartHistory)
        return self.history


def wrap_items(items: list[str], width: int, sep: str = "  ") -> list[str]:
    """``items`` joined with ``sep`` into as few lines of at most ``width`` as possible."""
    lines: list[str] = []
    current = ""
    for item in items:
        candidate = item if not current else current + sep + item
        if len(candidate) <= width or not current:
            current = candidate
        else:
            lines.append(current)
            current = item
    if current:
        lines.append(current)
    return lines
