"""Terminal output that never blocks, on a real pty whose output is stopped or not read."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import termios
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from otel_bpf.live import output as live_output
from otel_bpf.live.output import TerminalOutput, hand_off, same_terminal


@pytest.fixture
def pty() -> Iterator[tuple[int, int]]:
    """``(master, slave)``; nothing reads the master unless the test does."""
    master, slave = os.openpty()
    mode = termios.tcgetattr(slave)
    mode[1] &= ~termios.OPOST  # bytes as written (no \n -> \r\n)
    termios.tcsetattr(slave, termios.TCSANOW, mode)
    yield master, slave
    termios.tcflow(slave, termios.TCOON)
    os.close(slave)
    os.close(master)


def read_until(master: int, want: int, timeout: float = 5.0) -> bytes:
    """Read the master until ``want`` bytes came (or ``timeout``)."""
    got = bytearray()
    deadline = time.monotonic() + timeout
    while len(got) < want:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([master], [], [], left)[0]:
            break
        got += os.read(master, 65536)
    return bytes(got)


def test_the_original_descriptor_stays_blocking(pty: tuple[int, int]) -> None:
    _, slave = pty
    out = TerminalOutput(slave)
    try:
        assert out.nonblocking and out.fd != slave
        assert not os.get_blocking(out.fd)
        assert os.get_blocking(slave)  # shared with stderr and the shell: left alone
    finally:
        out.close()


def test_stopped_output_keeps_the_controls_in_order_and_only_the_newest_frame(
    pty: tuple[int, int],
) -> None:
    master, slave = pty
    out = TerminalOutput(slave)
    termios.tcflow(slave, termios.TCOOFF)
    out.send(b"<a>")
    out.show(b"<frame 1>")
    out.send(b"<b>")
    out.show(b"<frame 2>")
    out.show(b"<frame 3>")
    assert out.pump() is False  # nothing taken, nothing waited for
    assert out.frames_dropped == 2
    termios.tcflow(slave, termios.TCOON)
    assert out.drain(5.0)
    want = b"<a><b><frame 3>"
    assert read_until(master, len(want)) == want
    out.close()


def test_a_started_frame_is_finished_before_the_newest(pty: tuple[int, int]) -> None:
    master, slave = pty
    out = TerminalOutput(slave)
    big = b"".join(b"<line %06d>" % i for i in range(40_000))  # far more than a pty holds
    out.show(big)
    assert out.pump() is False  # part of it went out; nobody reads the master
    out.show(b"<frame 2>")
    out.show(b"<frame 3>")
    want = big + b"<frame 3>"
    reader = threading.Thread(target=lambda: got.append(read_until(master, len(want))))
    got: list[bytes] = []
    reader.start()
    assert out.drain(10.0)
    reader.join(10)
    assert got == [want]  # the started frame whole, then the newest; frame 2 never
    out.close()


def test_drain_gives_up_after_its_timeout(pty: tuple[int, int]) -> None:
    _, slave = pty
    out = TerminalOutput(slave)
    termios.tcflow(slave, termios.TCOOFF)
    out.send(b"restore")
    started = time.monotonic()
    assert out.drain(0.1) is False
    assert time.monotonic() - started < 2.0
    assert out.take() == b"restore" and not out.pending
    out.close()


def test_take_returns_the_rest_of_a_started_frame_first(pty: tuple[int, int]) -> None:
    _, slave = pty
    out = TerminalOutput(slave)
    big = b"x" * 500_000
    out.show(big)
    assert out.pump() is False
    out.send(b"<restore>")
    rest = out.take()
    assert rest.endswith(b"<restore>") and big.endswith(rest[: -len(b"<restore>")])
    assert len(rest) < len(big) + len(b"<restore>")  # some of the frame went out
    out.close()


def test_same_terminal(pty: tuple[int, int]) -> None:
    master, slave = pty
    other = os.dup(slave)
    r, w = os.pipe()
    try:
        assert same_terminal(slave, other)
        assert not same_terminal(slave, w)
        assert not same_terminal(r, w)
    finally:
        for fd in (other, r, w):
            os.close(fd)


def test_hand_off_writes_once_the_terminal_takes_output(pty: tuple[int, int]) -> None:
    master, slave = pty
    termios.tcflow(slave, termios.TCOOFF)
    assert hand_off(b"<rest of frame><restore>", slave, stderr_too=False)
    helper = live_output._helpers[-1]
    time.sleep(0.3)
    assert read_until(master, 1, timeout=0.1) == b""  # still stopped
    assert helper.poll() is None
    termios.tcflow(slave, termios.TCOON)
    assert read_until(master, 24) == b"<rest of frame><restore>"
    assert helper.wait(5) == 0


PROGRAM = textwrap.dedent(
    """
    import sys, termios
    from otel_bpf.live.output import hand_off
    termios.tcflow(2, termios.TCOOFF)
    assert hand_off(b"<restore>", 2, stderr_too=True)
    sys.stderr.write("<log line after the view>")
    sys.stderr.flush()
    """
)


def test_hand_off_takes_stderr_along_so_the_exit_does_not_block(pty: tuple[int, int]) -> None:
    """A process whose stderr is the stopped terminal exits at once; the terminal then gets
    the restore first and the log lines after it."""
    master, slave = pty
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM], stderr=slave, stdin=subprocess.DEVNULL, timeout=30
    )
    took = time.monotonic() - started
    stopped = read_until(master, 1, timeout=0.2)
    termios.tcflow(slave, termios.TCOON)
    want = b"<restore><log line after the view>"
    got = read_until(master, len(want))
    assert proc.returncode == 0 and took < 10
    assert stopped == b""
    assert got == want
