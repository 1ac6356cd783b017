"""Untrusted text made safe: nothing can act on the terminal, widths stay exact."""

from __future__ import annotations

import unicodedata

import pyte
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from otel_bpf.live.sanitize import display_width, fit, sanitize, truncate


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain", "plain"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),  # set the window title
        ("\x1b[31mred", "\\x1b[31mred"),  # colours
        ("a\rb\nc\td", "a\\x0db\\x0ac\\x09d"),
        ("\x9b2J", "\\x9b2J"),  # 8-bit CSI (C1 control)
        ("del\x7f", "del\\x7f"),
        ("\u202egnp.exe", "\\u202egnp.exe"),  # right-to-left override
        ("zero\u200bwidth", "zero\\u200bwidth"),
        ("sep\u2028line", "sep\\u2028line"),
        ("\u0301alone", "\\u0301alone"),  # a combining mark with nothing under it
        ("e\u0301", "e\u0301"),  # ... but kept on its base character
        ("名前", "名前"),
        ("raw\udcffbyte", "raw\\xffbyte"),  # surrogateescape'd undecodable byte
        # Widths terminals disagree on: emoji and other symbols, spacing marks, jamo.
        ("ok\U0001f600", "ok\\U0001f600"),
        ("\u0915\u0903", "\u0915\\u0903"),
        ("\u1100\u1161", "\u1100\\u1161"),
    ],
)
def test_sanitize(raw: str, shown: str) -> None:
    assert sanitize(raw) == shown


def test_bytes_with_invalid_utf8_are_replaced() -> None:
    assert sanitize(b"ok\xff\xfe\x1b") == "ok\ufffd\ufffd\\x1b"


def test_widths() -> None:
    assert display_width("abc") == 3
    assert display_width("名前") == 4
    assert display_width("e\u0301") == 1
    assert display_width("\uff21") == 2  # fullwidth A


def test_fit_pads_and_cuts_to_exact_columns() -> None:
    assert fit("abc", 5) == "abc  "
    assert fit("abc", 5, align=">") == "  abc"
    assert fit("abcdef", 4) == "abc~"
    assert fit("名前名前", 5) == "名前~"
    # A wide character that would straddle the edge becomes padding.
    assert fit("名前名前", 4) == "名 ~"
    assert display_width(fit("名前名前", 4)) == 4
    assert truncate("a名", 2) == "a "
    assert fit("x", 0) == ""
    assert fit("xyz", 1) == "x"


@settings(deadline=None)  # a busy machine must not fail these
@given(st.text(max_size=40))
def test_sanitised_text_is_printable(raw: str) -> None:
    """Whatever comes in, nothing that acts on a terminal comes out."""
    out = sanitize(raw)
    for ch in out:
        assert unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Cn", "Co", "Zl", "Zp"), ch


@settings(deadline=None)  # a busy machine must not fail these
@given(st.text(max_size=30), st.integers(min_value=0, max_value=40))
def test_fit_is_exactly_width(raw: str, width: int) -> None:
    assert display_width(fit(sanitize(raw), width)) == width


@settings(deadline=None)  # a busy machine must not fail these
@given(st.binary(max_size=30))
@example(b" \xde\xa6")  # a Thaana mark (combining class 0) after a space
def test_terminal_sees_only_text(raw: bytes) -> None:
    """Fed to a VT emulator, sanitised text only prints: the cursor ends where the text's
    width says, on the first line, and nothing is cleared or recoloured."""
    screen = pyte.Screen(120, 3)
    stream = pyte.ByteStream(screen)
    screen.draw("#" * 120)
    screen.cursor_position(2, 1)
    text = fit(sanitize(raw), 60)
    stream.feed(text.encode())
    assert screen.cursor.y == 1
    assert screen.cursor.x == 60
    assert screen.display[0] == "#" * 120
    assert all(not c.fg or c.fg == "default" for c in screen.buffer[1].values())


def test_kept_characters_have_the_width_a_vt_emulator_gives_them() -> None:
    """Every character left raw takes the columns we count (pyte's wcwidth table)."""
    import wcwidth

    from otel_bpf.live.sanitize import char_width

    differ = [
        hex(cp)
        for cp in range(0x20, 0x30000)
        if sanitize(chr(cp)) == chr(cp) and char_width(chr(cp)) != wcwidth.wcwidth(chr(cp))
    ]
    assert differ == []
