"""Settings of the live view (``bpftop-otel --live``)."""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from otel_bpf.sampler import DEFAULT_HISTORY


class Glyphs(enum.Enum):
    """Which characters the charts are drawn with."""

    ASCII = "ascii"
    """Plain 7-bit ASCII: works on every terminal and font."""
    BLOCK = "block"
    """Unicode block elements (U+2581..U+2588): eight levels per cell."""
    BRAILLE = "braille"
    """Unicode braille (U+2800..U+28FF): two samples per cell, four levels each."""


@dataclass(frozen=True)
class LiveOptions:
    """How the live view looks and behaves.

    The Process column and the detail view's maps come from the sampler's snapshots, so
    they need ``Sampler(owners=True, maps=True)``.  :func:`~otel_bpf.live.app.run_live`
    switches both lookups on for as long as the view is up and puts the previous settings
    back when it ends; from the next pass on the snapshots carry them.
    """

    ascii: bool | None = None
    """True forces ASCII glyphs, False allows Unicode, None (default) decides from the
    terminal: Unicode when the output encoding is UTF-8, ``TERM`` is not ``linux`` (the
    VT console font lacks the glyphs) and the locale is not ``C``/``POSIX``."""
    glyphs: Glyphs | None = None
    """Explicit chart glyphs; overrides ``ascii`` when given."""
    stdin_fd: int = 0
    """Where keys are read from (a tty)."""
    stdout_fd: int = 1
    """Where frames are written (a tty)."""
    history: int = DEFAULT_HISTORY
    """Passes the detail view's charts span.  The view keeps them itself, three figures per
    program and pass, so the sampler needs only a short history of its own."""

    def __post_init__(self) -> None:
        if isinstance(self.history, bool) or not isinstance(self.history, int):
            raise ValueError(f"history must be an integer >= 1, got {self.history!r}")
        if self.history < 1:
            raise ValueError(f"history must be an integer >= 1, got {self.history!r}")

    def resolve_glyphs(
        self, *, encoding: str | None = None, environ: dict[str, str] | None = None
    ) -> Glyphs:
        """The glyphs to use, deciding the ``None`` (auto) case from the environment."""
        if self.glyphs is not None:
            return self.glyphs
        if self.ascii:
            return Glyphs.ASCII
        if self.ascii is False:
            return Glyphs.BLOCK
        return Glyphs.BLOCK if unicode_supported(encoding, environ) else Glyphs.ASCII


def unicode_supported(encoding: str | None = None, environ: dict[str, str] | None = None) -> bool:
    """Whether the terminal is likely to draw the block glyphs (a guess, as in glances)."""
    env = dict(os.environ) if environ is None else environ
    if encoding is None:
        import sys

        encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "\u2581\u2588\u2591".encode(encoding)
    except (LookupError, UnicodeEncodeError):
        return False
    if env.get("TERM", "") in ("linux", "dumb", ""):
        return False
    locale = env.get("LC_ALL") or env.get("LC_CTYPE") or env.get("LANG") or "C"
    return locale not in ("C", "POSIX")
