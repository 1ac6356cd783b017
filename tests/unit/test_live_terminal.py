"""Escape-level checks: frames through a VT emulator (pyte), live mode on a real pty, and
``run_live`` end to end on a pty with both anyio backends."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import struct
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import pyte
import pytest
from fake_source import CallSource
from live_samples import STATS_ON, program

from otel_bpf.live import app as live_app
from otel_bpf.live import output as live_output
from otel_bpf.live.app import run_live
from otel_bpf.live.context import RenderContext
from otel_bpf.live.options import Glyphs, LiveOptions
from otel_bpf.live.screen import render_screen
from otel_bpf.live.state import Mode, ViewState
from otel_bpf.live.terminal import (
    Esc,
    Line,
    Style,
    Terminal,
    TerminalUnavailable,
    check_terminal,
    compose_frame,
)
from otel_bpf.records import Owner, ProgramRecord
from otel_bpf.sampler import Sampler

EVIL = Owner(pid=4242, comm="\x1b[2J\x1b]0;x\x07\x1b[31m", executable="x", via=("prog",))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_frame_through_a_vt_emulator() -> None:
    screen = pyte.Screen(40, 6)
    stream = pyte.ByteStream(screen)
    stream.feed(b"old junk everywhere\r\n" * 6)
    lines = [Line("title".ljust(40), Style.TITLE), Line("> row".ljust(40), Style.SELECTED)]
    lines.append(Line("short"))  # narrower than the screen: the old text must go
    frame = compose_frame(lines, 6, 40)
    # A full-width line is not followed by erase-to-end: with wrap off the cursor sits on
    # the last column and the erase would remove the line's last character.
    assert ("title".ljust(40) + Esc.SGR_RESET.value + Esc.ERASE_LINE_END.value) not in frame
    assert frame.startswith(Esc.SYNC_BEGIN.value) and frame.endswith(Esc.SYNC_END.value)
    assert Esc.CLEAR_SCREEN.value not in frame  # never cleared first: no flicker
    stream.feed(frame.encode())
    assert screen.display[:3] == [line.text.ljust(40) for line in lines]
    assert screen.display[3:] == [" " * 40] * 3  # the rest erased below
    assert screen.buffer[0][0].bold
    assert screen.buffer[1][0].reverse and not screen.buffer[2][0].reverse
    assert not screen.buffer[2][0].bold  # attributes reset after each styled line


def test_rendered_frame_with_hostile_names_cannot_act_on_the_terminal() -> None:
    from live_samples import snapshots

    history = snapshots(
        [
            [program(1, "\x1b[H\x1b[2Jname", owners=(EVIL,))],
            [program(1, "\x1b[H\x1b[2Jname", owners=(EVIL,), run_time_ns=100, run_cnt=1)],
        ]
    )
    for state in (ViewState(), ViewState(mode=Mode.DETAIL, detail_id=1)):
        ctx = RenderContext(history[-1], tuple(history), 160, 30, Glyphs.ASCII, "h", "k", 1.0, 0)
        lines, _, _ = render_screen(ctx, state)
        screen = pyte.Screen(160, 30)
        pyte.ByteStream(screen).feed(compose_frame(lines, 30, 160).encode())
        assert screen.display == [line.text for line in lines]
        assert screen.title == ""
        assert all(cell.fg == "default" for row in screen.buffer.values() for cell in row.values())
        shown = "\n".join(screen.display)
        assert "\\x1b[2J\\x1b]0;x\\x07\\x1b[31m(4242)" in shown
        assert "\\x1b[H\\x1b[2Jname" in shown


@dataclass
class Pty:
    master: int
    slave: int
    screen: pyte.Screen
    output: bytearray
    lock: threading.Lock

    def resize(self, columns: int, lines: int) -> None:
        with self.lock:
            fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", lines, columns, 0, 0))
            self.screen.resize(lines, columns)

    def rows(self) -> list[str]:
        """The screen's lines (read under the lock: the reader thread feeds the screen)."""
        with self.lock:
            return list(self.screen.display)

    def text(self) -> str:
        return "\n".join(self.rows())


@pytest.fixture
def pty(monkeypatch: pytest.MonkeyPatch) -> Iterator[Pty]:
    monkeypatch.setenv("TERM", "xterm")
    master, slave = os.openpty()
    screen = pyte.Screen(100, 30)
    stream = pyte.ByteStream(screen)
    output = bytearray()
    lock = threading.Lock()
    term = Pty(master, slave, screen, output, lock)
    term.resize(100, 30)

    def pump() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            with lock:
                stream.feed(data)  # the screen first: tests poll `output` for progress
                output.extend(data)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    yield term
    os.close(slave)
    if term.master >= 0:
        os.close(term.master)
    reader.join(2)


def test_terminal_enter_and_leave_on_a_pty(pty: Pty) -> None:
    before = termios.tcgetattr(pty.slave)
    term = Terminal(pty.slave, pty.slave)
    with term:
        inside = termios.tcgetattr(pty.slave)
        assert not inside[3] & termios.ICANON and not inside[3] & termios.ECHO
        assert inside[3] & termios.ISIG  # cbreak, not raw: Ctrl-C and Ctrl-Z still signal
    assert termios.tcgetattr(pty.slave) == before
    deadline = time.monotonic() + 2
    want = (Esc.WRAP_ON.value + Esc.CURSOR_SHOW.value + Esc.ALT_SCREEN_OFF.value).encode()
    while want not in pty.output and time.monotonic() < deadline:
        time.sleep(0.01)
    out = bytes(pty.output)
    entered = (Esc.ALT_SCREEN_ON.value + Esc.CURSOR_HIDE.value + Esc.WRAP_OFF.value).encode()
    assert out.startswith(entered)
    assert out.endswith(want)
    assert not pty.screen.cursor.hidden


def test_every_undo_step_runs_even_when_the_restore_write_fails(pty: Pty) -> None:
    before = termios.tcgetattr(pty.slave)
    term = Terminal(pty.slave, pty.slave)
    term.enter()
    # Writes to the terminal now fail (EBADF on a read-only descriptor), as on a hung-up tty.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, term.output.fd)
    os.close(null)
    failures = term.leave()
    assert len(failures) == 1 and isinstance(failures[0], OSError)
    assert termios.tcgetattr(pty.slave) == before  # the termios step still ran
    assert not term.active
    assert term.close() == b""  # nothing is kept for a terminal that fails writes


def test_check_terminal(pty: Pty) -> None:
    r, w = os.pipe()
    try:
        assert "not a tty" in (check_terminal(pty.slave, w, {"TERM": "xterm"}) or "")
        assert "standard input" in (check_terminal(r, pty.slave, {"TERM": "xterm"}) or "")
    finally:
        os.close(r)
        os.close(w)
    assert "TERM is dumb" in (check_terminal(pty.slave, pty.slave, {"TERM": "dumb"}) or "")
    assert "TERM is unset" in (check_terminal(pty.slave, pty.slave, {}) or "")
    assert check_terminal(pty.slave, pty.slave, {"TERM": "xterm-256color"}) is None


class Programs:
    """Counters that grow by a fixed amount per pass (programs 1..3; 2 can be unloaded)."""

    def __init__(self) -> None:
        self.passes = 0
        self.unload_2 = False

    @dataclass
    class Result:
        records: list[ProgramRecord]
        errors: list[str]

    def __call__(self) -> Programs.Result:
        self.passes += 1
        p = self.passes
        records = [
            program(
                i,
                f"otel_test_{i}",
                run_time_ns=100 * i * p * 10,
                run_cnt=10 * i * p,
                owners=(EVIL,) if i == 3 else (),
            )
            for i in (1, 2, 3)
            if not (i == 2 and self.unload_2)
        ]
        return Programs.Result(records, [])


async def wait_for(check: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``check`` (the pty is read by a thread, so there is no event to wait on)."""
    with anyio.fail_after(within):
        while not check():  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def live_session(
    pty: Pty, body: Callable[[Programs, Sampler], object], interval: float = 0.2
) -> Programs:
    programs = Programs()
    sampler = Sampler(
        interval=interval,
        source=CallSource(programs),
        stats_state=lambda: STATS_ON,
        online_cpus=lambda: 2,
    )
    options = LiveOptions(stdin_fd=pty.slave, stdout_fd=pty.slave, ascii=True)
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(sampler.run)

            async def drive() -> None:
                await wait_for(lambda: "otel_test_3" in pty.text())
                result = body(programs, sampler)
                if hasattr(result, "__await__"):
                    await result  # type: ignore[misc]

            tg.start_soon(drive)
            await run_live(sampler, options)
            tg.cancel_scope.cancel()
    return programs


def restored(pty: Pty) -> bool:
    return bytes(pty.output).endswith(Esc.ALT_SCREEN_OFF.value.encode())


@pytest.mark.anyio
async def test_run_live_keys_selection_and_quit(pty: Pty) -> None:
    before = termios.tcgetattr(pty.slave)

    async def body(programs: Programs, sampler: Sampler) -> None:
        await wait_for(lambda: "otel_test_3" in pty.text() and "0.0" in pty.text())
        assert "\\x1b[2J" in pty.text()  # the hostile comm, shown escaped
        os.write(pty.master, b"i")  # sort by id: at once, not at the next sample
        await wait_for(lambda: "ID ^" in pty.text(), 1.0)
        os.write(pty.master, b"\x1b[B")  # down: program 2
        await wait_for(lambda: any(r.startswith("> 2 ") for r in pty.rows()), 1.0)
        os.write(pty.master, b"c")  # CPU desc: 3, 2, 1; program 2 stays selected
        await wait_for(lambda: "CPU % v" in pty.text(), 1.0)
        assert any(r.startswith("> 2 ") for r in pty.rows())
        os.write(pty.master, b"\r")  # detail of program 2
        await wait_for(lambda: "Program 2 (otel_test_2)" in pty.text(), 1.0)
        programs.unload_2 = True
        await wait_for(lambda: "GONE: program 2" in pty.text(), 3.0)
        os.write(pty.master, b"\x1b")  # lone Escape: back after the quiet time
        await wait_for(lambda: "rows " in pty.text(), 1.0)
        os.write(pty.master, b"fotel_test_1")
        await wait_for(lambda: "filter: otel_test_1_" in pty.text(), 1.0)
        assert "otel_test_3" not in pty.text()
        os.write(pty.master, b"\r?")
        await wait_for(lambda: "keys" in pty.text() and "Ctrl-Z" in pty.text(), 1.0)
        os.write(pty.master, b"xq")

    await live_session(pty, body)
    await wait_for(lambda: restored(pty), 2.0)
    assert termios.tcgetattr(pty.slave) == before
    assert not pty.screen.cursor.hidden


@pytest.mark.anyio
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
async def test_run_live_quits_on_signals(pty: Pty, signum: int) -> None:
    def body(programs: Programs, sampler: Sampler) -> None:
        os.kill(os.getpid(), signum)

    await live_session(pty, body)
    await wait_for(lambda: restored(pty), 2.0)


@pytest.mark.anyio
async def test_terminal_hangup_ends_the_view_quietly(pty: Pty) -> None:
    """The terminal goes away (ssh dropped): reads and writes fail with EIO; no traceback."""

    def body(programs: Programs, sampler: Sampler) -> None:
        os.close(pty.master)
        pty.master = -1

    await live_session(pty, body)


@pytest.mark.anyio
async def test_resize_redraws_at_once(pty: Pty) -> None:
    async def body(programs: Programs, sampler: Sampler) -> None:
        width_before = max(len(r.rstrip()) for r in pty.rows())
        assert width_before > 60
        passes = programs.passes
        pty.resize(60, 20)
        os.kill(os.getpid(), signal.SIGWINCH)
        await wait_for(lambda: "Ev/s" in pty.text() or "Avg ns" in pty.text(), 1.0)
        assert programs.passes == passes  # redrawn before the next sample
        os.write(pty.master, b"q")

    await live_session(pty, body, interval=5.0)


@pytest.mark.anyio
async def test_sort_and_filter_apply_before_the_next_sample(pty: Pty) -> None:
    async def body(programs: Programs, sampler: Sampler) -> None:
        passes = programs.passes
        os.write(pty.master, b"i")
        await wait_for(lambda: "ID ^" in pty.text(), 1.0)
        rows = [r for r in pty.rows() if "otel_test_" in r]
        ids = [int(r[2:].split()[0]) for r in rows]
        assert ids == [1, 2, 3]
        os.write(pty.master, b"i")
        await wait_for(lambda: "ID v" in pty.text(), 1.0)
        ids = [int(r[2:].split()[0]) for r in pty.rows() if "otel_test_" in r]
        assert ids == [3, 2, 1]
        os.write(pty.master, b"ftest_2")
        await wait_for(lambda: "filter: test_2_" in pty.text(), 1.0)
        assert [r[2:].split()[0] for r in pty.rows() if "otel_test_" in r] == ["2"]
        assert programs.passes == passes  # all of it without a new sample
        os.write(pty.master, b"\rq")

    await live_session(pty, body, interval=5.0)


@pytest.mark.anyio
async def test_suspend_leaves_and_resumes(pty: Pty, monkeypatch: pytest.MonkeyPatch) -> None:
    stops: list[bytes] = []

    def fake_stop() -> None:
        # A real SIGSTOP would stop the test run (the tmux test does it for real); record
        # what the terminal saw at that moment instead.
        time.sleep(0.1)
        stops.append(bytes(pty.output))

    async def body(programs: Programs, sampler: Sampler) -> None:
        monkeypatch.setattr(live_app, "stop_self", fake_stop)
        os.kill(os.getpid(), signal.SIGTSTP)
        await wait_for(lambda: bool(stops), 2.0)
        assert stops[0].endswith(Esc.ALT_SCREEN_OFF.value.encode())
        mark = len(stops[0])
        await wait_for(lambda: Esc.ALT_SCREEN_ON.value.encode() in pty.output[mark:], 2.0)
        await wait_for(lambda: b"otel_test_3" in pty.output[mark:], 2.0)  # full redraw
        os.write(pty.master, b"q")

    await live_session(pty, body)
    await wait_for(lambda: restored(pty), 2.0)


def contains(exc: BaseException, kind: type[BaseException]) -> bool:
    """``exc`` is ``kind`` or an exception group holding one."""
    if isinstance(exc, kind):
        return True
    return any(contains(e, kind) for e in getattr(exc, "exceptions", ()))


@pytest.mark.anyio
async def test_exception_in_the_view_restores_the_terminal(
    pty: Pty, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = termios.tcgetattr(pty.slave)

    def broken(*args: object) -> object:
        raise ZeroDivisionError("render bug")

    def body(programs: Programs, sampler: Sampler) -> None:
        monkeypatch.setattr(live_app, "render_screen", broken)
        os.write(pty.master, b"j")

    with pytest.raises(BaseException) as info:
        await live_session(pty, body)
    assert contains(info.value, ZeroDivisionError)
    await wait_for(lambda: restored(pty), 2.0)
    assert termios.tcgetattr(pty.slave) == before


@pytest.mark.anyio
async def test_log_records_are_kept_off_the_screen_and_replayed(
    pty: Pty, caplog: pytest.LogCaptureFixture
) -> None:
    def body(programs: Programs, sampler: Sampler) -> None:
        logging.getLogger("otel_bpf.test").warning("LOGGED-WHILE-LIVE")
        os.write(pty.master, b"q")

    with caplog.at_level(logging.WARNING):
        await live_session(pty, body)
    assert b"LOGGED-WHILE-LIVE" not in pty.output
    assert "LOGGED-WHILE-LIVE" in caplog.text


@pytest.mark.anyio
async def test_run_live_refuses_a_non_terminal() -> None:
    r, w = os.pipe()
    try:
        sampler = Sampler(
            source=CallSource(Programs()), stats_state=lambda: STATS_ON, online_cpus=lambda: 2
        )
        with pytest.raises(TerminalUnavailable, match="not a tty"):
            await run_live(sampler, LiveOptions(stdin_fd=r, stdout_fd=w))
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.anyio
async def test_without_handlers_warnings_wait_for_the_normal_screen(
    pty: Pty, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no root handler Python's last resort would write to stderr mid-frame."""
    monkeypatch.setattr(logging.getLogger(), "handlers", [])

    def body(programs: Programs, sampler: Sampler) -> None:
        logging.getLogger("otel_bpf.test").warning("LAST-RESORT-WHILE-LIVE")
        assert "LAST-RESORT-WHILE-LIVE" not in capsys.readouterr().err
        os.write(pty.master, b"q")

    await live_session(pty, body)
    assert "LAST-RESORT-WHILE-LIVE" in capsys.readouterr().err


def test_live_mode_turns_flow_control_off_and_restores_it(pty: Pty) -> None:
    mode = termios.tcgetattr(pty.slave)
    mode[0] |= termios.IXON
    termios.tcsetattr(pty.slave, termios.TCSANOW, mode)
    with Terminal(pty.slave, pty.slave):
        # Ctrl-S is a key now, not a stop of the output that would block the next frame.
        assert not termios.tcgetattr(pty.slave)[0] & (termios.IXON | termios.IXOFF)
    assert termios.tcgetattr(pty.slave)[0] & termios.IXON


def test_a_terminal_reporting_0x0_gets_80x24(pty: Pty) -> None:
    fcntl.ioctl(pty.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
    assert Terminal(pty.slave, pty.slave).size() == (80, 24)
    fcntl.ioctl(pty.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 0, 0, 0))
    assert Terminal(pty.slave, pty.slave).size() == (80, 30)


def tty_restored(pty: Pty) -> bool:
    """The restore sequence came last and the emulator shows the cursor again."""
    return restored(pty) and not pty.screen.cursor.hidden


@pytest.mark.anyio
async def test_stopped_output_blocks_neither_sampling_nor_the_exit(pty: Pty) -> None:
    """Output stopped from elsewhere (``tcflow(TCOOFF)``, as another process on the pty can):
    frames wait without blocking the loop, sampling goes on, SIGTERM ends the view at once
    with the settings restored, and the screen is restored once the output resumes."""
    before = termios.tcgetattr(pty.slave)
    signalled: list[float] = []
    # A safety net: were the frame write to block the loop, the output resumes after 8 s and
    # the assertions fail instead of the test hanging.
    resume = threading.Timer(8, termios.tcflow, (pty.slave, termios.TCOON))

    async def body(programs: Programs, sampler: Sampler) -> None:
        termios.tcflow(pty.slave, termios.TCOOFF)
        resume.start()
        passes = programs.passes
        await wait_for(lambda: programs.passes >= passes + 5, 3.0)  # 5 passes at 0.2 s
        signalled.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGTERM)

    try:
        await live_session(pty, body)
        took = time.monotonic() - signalled[0]
        settings = termios.tcgetattr(pty.slave)
        shown_while_stopped = tty_restored(pty)
    finally:
        resume.cancel()
        termios.tcflow(pty.slave, termios.TCOON)
    assert took < 1.0, f"the view took {took:.2f} s to end after SIGTERM"
    assert settings == before  # at once, whatever the output does
    assert not shown_while_stopped
    await wait_for(lambda: tty_restored(pty), 5.0)  # written by the helper
    for helper in live_output._helpers:
        assert helper.wait(5) == 0


@pytest.mark.anyio
async def test_sigwinch_storm_is_quiet_and_redraws_at_the_final_size(
    pty: Pty, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 SIGWINCH at once: no 'Exception ignored' (a full signal wakeup fd), one frame at
    the final size, and a SIGTERM right after the storm is not lost."""
    unraisable: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", unraisable.append)

    async def body(programs: Programs, sampler: Sampler) -> None:
        pty.resize(70, 20)
        for _ in range(5000):
            os.kill(os.getpid(), signal.SIGWINCH)
        # The position line of a 30-line frame is below line 20: only a new frame shows it.
        await wait_for(lambda: any("rows 1-3 of 3" in r for r in pty.rows()), 3.0)
        os.kill(os.getpid(), signal.SIGTERM)

    await live_session(pty, body, interval=5.0)
    assert not unraisable, unraisable[0]
    assert all(len(r) == 70 for r in pty.rows())


def last_row_selected(pty: Pty) -> bool:
    rows = [r for r in pty.rows() if "otel_test_" in r]
    return len(rows) == 3 and rows[-1].startswith("> ")


@pytest.mark.anyio
async def test_a_paste_is_decoded_and_drawn_in_batches(
    pty: Pty, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20,000 pasted keys: the rows are worked out per batch of keys, not per key, and the
    frames drawn are a handful (the paste reaches the view in tty-buffer-sized pieces)."""
    counts = {"rows": 0, "frames": 0}
    real_rows, real_render = live_app.visible_rows, live_app.render_screen

    def rows(*args: Any) -> Any:
        counts["rows"] += 1
        return real_rows(*args)

    def render(*args: Any) -> Any:
        counts["frames"] += 1
        return real_render(*args)

    def paste(data: bytes) -> None:
        view = memoryview(data)
        while view:  # the slave's input queue is small: the master write waits for reads
            view = view[os.write(pty.master, view) :]

    async def body(programs: Programs, sampler: Sampler) -> None:
        monkeypatch.setattr(live_app, "visible_rows", rows)
        monkeypatch.setattr(live_app, "render_screen", render)
        await anyio.to_thread.run_sync(paste, b"j" * 20_000)
        await wait_for(lambda: last_row_selected(pty), 5.0)  # 20,000 moves down end there
        os.write(pty.master, b"q")

    await live_session(pty, body, interval=5.0)
    assert counts["rows"] < 200 and counts["frames"] < 200, counts


@pytest.mark.anyio
async def test_sigterm_right_behind_a_signal_storm_is_not_lost(pty: Pty) -> None:
    """The storm fills the signal wakeup fd before the loop reads any of it, so SIGTERM's
    wakeup byte is dropped; asyncio learns of signals only from those bytes."""

    def body(programs: Programs, sampler: Sampler) -> None:
        for _ in range(5000):
            os.kill(os.getpid(), signal.SIGWINCH)
        os.kill(os.getpid(), signal.SIGTERM)

    with anyio.fail_after(5):
        await live_session(pty, body, interval=5.0)
    await wait_for(lambda: restored(pty), 2.0)
