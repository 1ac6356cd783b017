"""The live view (``bpftop-otel --live``): a top-like terminal view of the sampler's stream.

Plain escape sequences and termios, no curses.  :func:`otel_bpf.live.app.run_live` runs it;
:func:`otel_bpf.live.terminal.check_terminal` says beforehand whether the terminal can.
"""

from __future__ import annotations

from otel_bpf.live.options import Glyphs, LiveOptions

__all__ = ["Glyphs", "LiveOptions"]
