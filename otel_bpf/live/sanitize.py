"""Untrusted text (process, program and map names, paths) made safe to put on a terminal.

A process can name itself anything (``prctl(PR_SET_NAME)``), escape sequences included, and
a program or map name comes from whoever loaded it.  Before such text reaches the screen,
every character that could act on the terminal (C0/C1 controls, DEL, format characters such
as bidi overrides, lone surrogates from undecodable bytes) is shown escaped as ``\\x1b``,
``\\u202e`` and so on.  What remains is printable, and :func:`display_width` knows how many
columns it takes (East Asian wide characters take two, combining marks none), so columns
stay exactly aligned.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

ELLIPSIS = "~"
"""Marks text cut to fit a column (ASCII, so it is one column everywhere)."""

# Categories never written raw: controls, format characters (bidi overrides, zero-width
# joiners), surrogates (from surrogateescape-decoded bytes), unassigned code points, and
# the line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Cn", "Co", "Zl", "Zp"})
# Characters whose width terminals disagree on (so columns after them would shift): other
# symbols, emoji among them, whose width changed between Unicode versions; spacing
# combining marks (0 columns in some wcwidth tables, 1 in others); conjoining Hangul jamo
# and fillers.  They are shown escaped, which is exact everywhere.
_UNSURE_CATEGORIES = frozenset({"So", "Mc"})
_UNSURE_RANGES = (
    (0x1160, 0x11FF),
    (0x3164, 0x3164),
    (0xD7B0, 0xD7FF),
    (0xFFA0, 0xFFA0),
    (0x1D360, 0x1D37F),  # counting rod numerals: wide since Unicode 15
)


def _unsure(ch: str, cat: str) -> bool:
    if ch == "\ufffd":  # the replacement character: one column, and it marks bad input
        return False
    if cat in _UNSURE_CATEGORIES:
        return True
    code = ord(ch)
    return any(lo <= code <= hi for lo, hi in _UNSURE_RANGES)


def _escape(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: stands for the raw byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


@lru_cache(maxsize=4096)
def sanitize(text: str | bytes) -> str:
    """``text`` with everything that could act on a terminal shown escaped.

    Bytes are decoded as UTF-8 with invalid sequences replaced (U+FFFD).  A backslash is
    kept as is: the escapes are for reading, not for decoding back.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    out: list[str] = []
    base = False  # whether a combining mark has a printable character to sit on
    for ch in text:
        if " " <= ch <= "~":  # printable ASCII: the common case
            out.append(ch)
            base = True
            continue
        cat = unicodedata.category(ch)
        if cat in _UNSAFE_CATEGORIES or _unsure(ch, cat):
            out.append(_escape(ch))
            base = False
        elif cat in ("Mn", "Me") and (not base or not unicodedata.combining(ch)):
            # A mark with nothing under it would join our padding; one with combining
            # class 0 (e.g. Thaana vowel signs) is drawn differently by terminals.
            out.append(_escape(ch))
        else:
            out.append(ch)
            base = True
    return "".join(out)


def char_width(ch: str) -> int:
    """Columns ``ch`` takes on a terminal (for sanitised text)."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Columns sanitised ``text`` takes on a terminal."""
    if text.isascii():
        return len(text)
    return sum(char_width(ch) for ch in text)


def fit(text: str, width: int, *, align: str = "<") -> str:
    """Sanitised ``text`` cut or padded to exactly ``width`` columns.

    Cut text ends in ``~``; a wide character that would straddle the edge is replaced by
    padding, so the result is never wider than ``width``.
    """
    if width <= 0:
        return ""
    w = display_width(text)
    if w > width:
        text = truncate(text, width - 1) + ELLIPSIS if width > 1 else truncate(text, 1)
        w = display_width(text)
    pad = " " * (width - w)
    return pad + text if align == ">" else text + pad


def truncate(text: str, width: int) -> str:
    """The longest prefix of sanitised ``text`` at most ``width`` columns wide, padded to it
    when a wide character did not fit."""
    if text.isascii():
        return text[:width]
    out: list[str] = []
    used = 0
    cut = False
    for ch in text:
        cw = char_width(ch)
        if used + cw > width:
            cut = True
            break
        out.append(ch)
        used += cw
    return "".join(out) + (" " * (width - used) if cut else "")
