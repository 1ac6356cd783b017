"""What one frame is drawn from: the data, the terminal size and the glyphs."""

from __future__ import annotations

from dataclasses import dataclass

from otel_bpf.live.options import Glyphs
from otel_bpf.snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class RenderContext:
    """Inputs of a frame besides the view state (everything already read; no I/O)."""

    snapshot: Snapshot | None
    """The newest snapshot; None until the first pass is published."""
    history: tuple[Snapshot, ...]
    """The sampler's window, oldest first."""
    width: int
    height: int
    glyphs: Glyphs = Glyphs.ASCII
    host: str = ""
    kernel: str = ""
    interval: float = 1.0
    now: float = 0.0
    """Wall-clock time of the frame (for ages)."""


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
