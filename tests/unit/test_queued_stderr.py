"""Log lines to a stderr that takes nothing: the caller never waits, the lines dropped are
counted and said once the reader catches up, and the exit waits only a bounded time."""

from __future__ import annotations

import fcntl
import os
import threading
import time

from otel_bpf.cli.logs import QueuedStderr

F_SETPIPE_SZ = 1031


def read_until_closed(fd: int, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        while chunk := os.read(fd, 65536):
            into.append(chunk)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_a_full_pipe_never_blocks_the_writer_and_drops_are_said_later() -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    stream = QueuedStderr(write_end, max_bytes=8192)
    got: list[bytes] = []
    try:
        line = "x" * 99 + "\n"
        started = time.monotonic()
        for _ in range(1000):  # 100 KB into 4 KiB of pipe and 8 KiB of queue
            stream.write(line)
        assert time.monotonic() - started < 5  # a direct write would block for ever
        dropped = stream.dropped
        assert dropped > 0
        assert not stream.drain(0.2)  # nobody reads: gives up after the stall
        reader = read_until_closed(read_end, got)
        assert stream.drain(5.0)  # a reader again: everything held goes out
        stream.write("after\n")  # caught up: the count comes first
        assert stream.drain(5.0)
    finally:
        stream.close()
        os.close(write_end)
    reader.join(5)
    os.close(read_end)
    text = b"".join(got).decode()
    said = f"bpftop-otel: {dropped} log lines dropped: standard error was not being read\n"
    assert text.endswith(said + "after\n")
    kept = text.removesuffix(said + "after\n")
    assert kept == line * kept.count("\n")  # whole lines only
    assert kept.count("\n") + dropped == 1000


def test_a_failed_descriptor_loses_the_lines_not_the_caller() -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # EPIPE on the first write (SIGPIPE is ignored by Python)
    stream = QueuedStderr(write_end)
    try:
        stream.write("one\n")
        assert not stream.drain(1.0)
        stream.write("two\n")
    finally:
        stream.close()
        os.close(write_end)
