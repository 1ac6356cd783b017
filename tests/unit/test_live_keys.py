"""The key decoder: every common terminal's sequences, split reads, the lone ESC."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_bpf.live.keys import Key, KeyDecoder

CASES = [
    (b"\x1b[A", [Key.UP]),
    (b"\x1b[B", [Key.DOWN]),
    (b"\x1b[C", [Key.RIGHT]),
    (b"\x1b[D", [Key.LEFT]),
    (b"\x1bOA", [Key.UP]),  # application cursor mode
    (b"\x1bOB", [Key.DOWN]),
    (b"\x1b[1;5A", [Key.UP]),  # Ctrl+Up decodes as Up
    (b"\x1b[5~", [Key.PAGE_UP]),
    (b"\x1b[6~", [Key.PAGE_DOWN]),
    (b"\x1b[H", [Key.HOME]),
    (b"\x1b[F", [Key.END]),
    (b"\x1bOH", [Key.HOME]),
    (b"\x1bOF", [Key.END]),
    (b"\x1b[1~", [Key.HOME]),  # linux console, screen, tmux
    (b"\x1b[4~", [Key.END]),
    (b"\x1b[7~", [Key.HOME]),  # rxvt
    (b"\x1b[8~", [Key.END]),
    (b"\x1b[3~", [Key.DELETE]),
    (b"\r", [Key.ENTER]),
    (b"\n", [Key.ENTER]),
    (b"\x1bOM", [Key.ENTER]),
    (b"\x7f", [Key.BACKSPACE]),
    (b"\x08", [Key.BACKSPACE]),
    (b"\x03", [Key.CTRL_C]),
    (b"\x0c", [Key.CTRL_L]),
    (b"\t", [Key.TAB]),
    (b"q", ["q"]),
    (b"jk?", ["j", "k", "?"]),
    (b"\x1b[A\x1b[Bq", [Key.UP, Key.DOWN, "q"]),
    ("é".encode(), ["é"]),
    ("名".encode(), ["名"]),
    (b"\x1b[[A", []),  # linux console F1: recognised and ignored
    (b"\x1b[200~", []),  # bracketed paste start: ignored, not garbage
    (b"\x01\x02", []),  # other control characters mean nothing
]


@pytest.mark.parametrize(("data", "expected"), CASES)
def test_whole_reads(data: bytes, expected: list[object]) -> None:
    decoder = KeyDecoder()
    assert decoder.feed(data) == expected
    assert not decoder.pending


@pytest.mark.parametrize(("data", "expected"), CASES)
def test_every_split_point(data: bytes, expected: list[object]) -> None:
    """A read can end anywhere inside a sequence; the result is the same."""
    for cut in range(1, len(data)):
        decoder = KeyDecoder()
        events = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert events == expected, cut


@pytest.mark.parametrize(("data", "expected"), CASES)
def test_byte_by_byte(data: bytes, expected: list[object]) -> None:
    decoder = KeyDecoder()
    events = []
    for b in data:
        events += decoder.feed(bytes([b]))
    assert events == expected


def test_lone_escape_waits_for_quiet_then_is_escape() -> None:
    decoder = KeyDecoder()
    assert decoder.feed(b"\x1b") == []
    assert decoder.pending
    assert decoder.flush() == [Key.ESCAPE]
    assert not decoder.pending


def test_escape_then_sequence_later_is_not_escape() -> None:
    decoder = KeyDecoder()
    assert decoder.feed(b"\x1b") == []
    assert decoder.feed(b"[B") == [Key.DOWN]


def test_incomplete_csi_flushes_as_escape_and_keeps_going() -> None:
    decoder = KeyDecoder()
    assert decoder.feed(b"\x1b[") == []
    assert decoder.flush()[0] is Key.ESCAPE
    assert decoder.feed(b"j") == ["j"]


def test_double_escape_is_escape_then_pending() -> None:
    decoder = KeyDecoder()
    assert decoder.feed(b"\x1b\x1b") == [Key.ESCAPE]
    assert decoder.flush() == [Key.ESCAPE]


def test_escape_followed_by_letter_is_escape_then_letter() -> None:
    """ESC f (Alt-f on most terminals) is not lost: Escape, then the letter."""
    assert KeyDecoder().feed(b"\x1bf") == [Key.ESCAPE, "f"]


def test_invalid_utf8_is_replaced_not_dropped() -> None:
    decoder = KeyDecoder()
    assert decoder.feed(b"\xff") == ["\ufffd"]
    assert decoder.feed(b"\xc3") == []
    assert decoder.flush() == ["\ufffd"]


def test_broken_utf8_does_not_swallow_a_following_sequence() -> None:
    assert KeyDecoder().feed(b"\xe2\x1b[A") == ["\ufffd", Key.UP]
    assert KeyDecoder().feed(b"\xe2\x82q") == ["\ufffd", "q"]


@settings(deadline=None)  # a busy machine must not fail these
@given(st.binary(max_size=24), st.data())
def test_any_bytes_any_split_same_events(data: bytes, draw: st.DataObject) -> None:
    """Whatever arrives, split wherever, the decoder never raises and agrees with itself."""
    whole = KeyDecoder()
    expected = whole.feed(data) + whole.flush()
    cut = draw.draw(st.integers(min_value=0, max_value=len(data)))
    split = KeyDecoder()
    got = split.feed(data[:cut]) + split.feed(data[cut:]) + split.flush()
    assert got == expected
    assert all(isinstance(e, Key) or (len(e) == 1 and e.isprintable()) for e in got)
