"""--json output to a reader that stalls or fails: never blocks, drops ticks whole, says so."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
import time

import pytest

from otel_bpf.cli.output import LineOutput, OutputError, check_open, raise_for

F_SETPIPE_SZ = 1031


def tick(seq: int, lines: int = 50) -> list[str]:
    return [f'{{"seq":{seq},"id":{i},"pad":"{"x" * 200}"}}' for i in range(lines)]


def test_a_stalled_reader_never_blocks_and_ticks_are_dropped_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)  # a small pipe fills at once
    output = LineOutput(write_end, max_bytes=64 * 1024)
    try:
        with caplog.at_level(logging.WARNING, "bpftop-otel"):
            started = time.monotonic()
            taken = [output.offer(tick(seq)) for seq in range(200)]
            assert time.monotonic() - started < 1.0, "offer waited for the reader"
        assert output.dropped == taken.count(False) > 100
        assert output.buffered <= 64 * 1024
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "ticks are dropped whole" in warnings[0].getMessage()

        # The reader comes back: it reads whole lines of whole ticks only.
        got = bytearray()

        def read_all() -> None:
            while chunk := os.read(read_end, 65536):
                got.extend(chunk)

        reader = threading.Thread(target=read_all)
        reader.start()
        assert output.close(stall=5.0)
        os.close(write_end)
        reader.join(10)
    finally:
        os.close(read_end)
    lines = bytes(got).decode().splitlines(keepends=True)
    assert all(line.endswith("}\n") for line in lines)
    seqs = [int(line.split(",")[0].split(":")[1]) for line in lines]
    per_seq = {s: seqs.count(s) for s in seqs}
    assert set(per_seq.values()) == {50}, "a tick was cut"
    kept = [seq for seq, ok in enumerate(taken) if ok]
    assert sorted(per_seq) == kept


def test_close_gives_up_on_a_reader_that_takes_nothing() -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    output = LineOutput(write_end, max_bytes=1 << 20)
    try:
        for seq in range(5):
            assert output.offer(tick(seq))
        started = time.monotonic()
        assert not output.close(stall=0.3)
        assert 0.25 < time.monotonic() - started < 2.0
    finally:
        os.close(read_end)


def test_a_full_device_fails_once_and_ends_the_run() -> None:
    failed = threading.Event()
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        output = LineOutput(fd, on_error=failed.set)
        assert output.offer(tick(1))
        assert failed.wait(5)
        assert isinstance(output.error, OSError) and output.error.errno == errno.ENOSPC
        assert not output.offer(tick(2))
        with pytest.raises(OutputError, match=r"^cannot write standard output: No space left"):
            raise_for(output.error)
    finally:
        os.close(fd)


def test_a_gone_reader_is_a_broken_pipe() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    output = LineOutput(write_end)
    try:
        output.offer(tick(1))
        output.close(stall=1.0)
        assert isinstance(output.error, BrokenPipeError)
        with pytest.raises(BrokenPipeError):
            raise_for(output.error)
    finally:
        os.close(write_end)


def test_a_closed_stdout_is_refused() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(OutputError, match="standard output is closed"):
        check_open(write_end)
