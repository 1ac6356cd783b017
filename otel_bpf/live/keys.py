"""Incremental decoding of terminal input bytes into key events (pure; no I/O).

Reads from a tty can split a sequence anywhere (``b"\\x1b["`` then ``b"A"``), so the
decoder keeps what it cannot decode yet.  A lone ESC is ambiguous (the Escape key, or the
start of a sequence still on its way): :attr:`KeyDecoder.pending` tells the caller to wait a
short quiet time (about 50 ms) and then call :meth:`KeyDecoder.flush`.
"""

from __future__ import annotations

import codecs
import enum


class Key(enum.Enum):
    """Keys other than printable characters."""

    UP = "up"
    DOWN = "down"
    LEFT = "left"
    RIGHT = "right"
    PAGE_UP = "pgup"
    PAGE_DOWN = "pgdn"
    HOME = "home"
    END = "end"
    INSERT = "insert"
    DELETE = "delete"
    ENTER = "enter"
    ESCAPE = "esc"
    BACKSPACE = "backspace"
    TAB = "tab"
    CTRL_C = "ctrl-c"
    CTRL_L = "ctrl-l"


KeyEvent = Key | str
"""A :class:`Key`, or one printable character as a 1-character ``str``."""

ESC = 0x1B

# CSI sequences ending in ``~``: the number says which key (xterm, VT220, rxvt, linux).
_TILDE = {
    "1": Key.HOME,
    "2": Key.INSERT,
    "3": Key.DELETE,
    "4": Key.END,
    "5": Key.PAGE_UP,
    "6": Key.PAGE_DOWN,
    "7": Key.HOME,
    "8": Key.END,
}
# Final letters of ``ESC [ ... X`` and ``ESC O X`` (SS3, application cursor mode).
_LETTER = {
    "A": Key.UP,
    "B": Key.DOWN,
    "C": Key.RIGHT,
    "D": Key.LEFT,
    "H": Key.HOME,
    "F": Key.END,
    "M": Key.ENTER,  # SS3 M: keypad Enter
}
_CONTROL = {
    0x0D: Key.ENTER,
    0x0A: Key.ENTER,
    0x7F: Key.BACKSPACE,
    0x08: Key.BACKSPACE,
    0x09: Key.TAB,
    0x03: Key.CTRL_C,
    0x0C: Key.CTRL_L,
}


class KeyDecoder:
    """Feed bytes as they arrive; get the complete key events out."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    @property
    def pending(self) -> bool:
        """Bytes are held that may still become a longer sequence."""
        return bool(self._buf)

    def feed(self, data: bytes) -> list[KeyEvent]:
        """Decode ``data`` (appended to what was held); returns the complete events."""
        self._buf += data
        events: list[KeyEvent] = []
        while self._buf:
            used = self._decode_one(events, final=False)
            if used == 0:
                break
            del self._buf[:used]
        return events

    def flush(self) -> list[KeyEvent]:
        """After a quiet time: whatever is held is taken as complete (a lone ESC is Escape)."""
        events: list[KeyEvent] = []
        while self._buf:
            used = self._decode_one(events, final=True)
            del self._buf[: max(used, 1)]
        self._utf8.reset()
        return events

    def _decode_one(self, out: list[KeyEvent], *, final: bool) -> int:
        """Decode one event from the buffer start; returns bytes used (0: need more)."""
        buf = self._buf
        b = buf[0]
        if b == ESC:
            return self._decode_escape(out, final=final)
        if b in _CONTROL:
            out.append(_CONTROL[b])
            return 1
        if b < 0x20:
            return 1  # other control characters mean nothing here
        if b < 0x80:
            out.append(chr(b))
            return 1
        # A UTF-8 sequence: its length from the lead byte; invalid bytes become U+FFFD.
        need = 2 if b >> 5 == 0b110 else 3 if b >> 4 == 0b1110 else 4 if b >> 3 == 0b11110 else 1
        size = 1
        while size < need and size < len(buf) and 0x80 <= buf[size] <= 0xBF:
            size += 1
        if size < need and size == len(buf) and not final:
            return 0  # the rest of the character is still on its way
        # A broken sequence ends at the first byte that cannot continue it, so an escape
        # sequence right after it is still decoded.
        chunk = bytes(buf[:size])
        text = self._utf8.decode(chunk, final=True)
        self._utf8.reset()
        out.extend(ch for ch in text if ch.isprintable())
        return len(chunk)

    def _decode_escape(self, out: list[KeyEvent], *, final: bool) -> int:
        buf = self._buf
        if len(buf) == 1:
            if final:
                out.append(Key.ESCAPE)
                return 1
            return 0
        second = buf[1]
        if second == ord("["):
            return self._decode_csi(out, final=final)
        if second == ord("O"):
            if len(buf) < 3:
                if final:
                    out.append(Key.ESCAPE)
                    return 1
                return 0
            key = _LETTER.get(chr(buf[2]))
            if key is not None:
                out.append(key)
            return 3
        if second == ESC:
            out.append(Key.ESCAPE)
            return 1
        # ESC + key is Alt+key on most terminals; we treat it as Escape then the key.
        out.append(Key.ESCAPE)
        return 1

    def _decode_csi(self, out: list[KeyEvent], *, final: bool) -> int:
        buf = self._buf
        if len(buf) > 2 and buf[2] == ord("["):
            # Linux console function keys, ESC [ [ A .. ESC [ [ E: recognised, ignored.
            if len(buf) < 4:
                if final:
                    out.append(Key.ESCAPE)
                    return 1
                return 0
            return 4
        i = 2
        # Parameter bytes 0x30-0x3F, intermediate bytes 0x20-0x2F, one final 0x40-0x7E.
        while i < len(buf) and 0x20 <= buf[i] <= 0x3F:
            i += 1
        if i >= len(buf):
            if final:
                out.append(Key.ESCAPE)
                return 1
            return 0
        last = buf[i]
        if not 0x40 <= last <= 0x7E:
            out.append(Key.ESCAPE)  # malformed: drop the introducer, keep the rest
            return 2
        params = bytes(buf[2:i]).decode("ascii", "replace")
        final_char = chr(last)
        # ESC [ 1 ; 5 A (a modified arrow) decodes as the plain key.
        key = _TILDE.get(params.split(";")[0]) if final_char == "~" else _LETTER.get(final_char)
        if key is not None:
            out.append(key)
        return i + 1
