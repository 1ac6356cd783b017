"""Standard output that does not take the lines: a stalled ``--json`` reader, a closed
stdout, a full device.  Sampling and the other exporters go on, a signal still ends the run
at once, and a failed output is one error line with exit status 1.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path

import pytest
from peers import cli_command, cli_env, free_port, wait_for_port, wait_until
from scraped import assert_demo_runs_grow, demo_runs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

F_SETPIPE_SZ = 1031


def runs_grow_then_sigterm(
    proc: subprocess.Popen[bytes], port: int, step: float
) -> tuple[int, float]:
    """The demo's scraped runs grow over four readings ``step`` s apart; then SIGTERM.
    Returns the exit status and the seconds the exit took."""
    assert_demo_runs_grow(port, step)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    status = proc.wait(10)
    return status, time.monotonic() - signalled


def test_a_stalled_json_reader_stalls_neither_sampling_nor_prometheus(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)  # full after the first tick; never read
    port = free_port()
    err = tmp_path / "stderr"
    with open(err, "wb") as err_file:
        proc = subprocess.Popen(
            [*cli_command(), "--json", "--demo", "--exporter", "prometheus",
             "--prometheus-port", str(port), "--interval", "0.5"],
            stdout=write_end, stderr=err_file, stdin=subprocess.DEVNULL, env=cli_env(),
        )  # fmt: skip
    os.close(write_end)
    try:
        assert wait_for_port(port, 45, proc), err.read_text()
        assert wait_until(lambda: demo_runs(port) > 0, 30), err.read_text()
        time.sleep(2)  # the pipe is long full by now
        status, took = runs_grow_then_sigterm(proc, port, step=1.5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(read_end)
    text = err.read_text()
    assert status == 0, text
    assert took < 1.5, f"exit took {took:.2f} s after SIGTERM with the reader stalled"
    assert "Traceback" not in text
    assert "--json reader stopped reading" in text


def run(args: list[str], **redirect: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli_command(), "--json", "--count", "2", "--interval", "0.2", "--exporter", "none",
         *args],
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=60, env=cli_env(),
        **redirect,  # type: ignore[call-overload]
    )  # fmt: skip


def one_error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("bpftop-otel: error:")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr


def test_closed_stdout_is_one_error_line() -> None:
    # As a shell's >&- : fd 1 is not open in the child.
    proc = run([], stdout=subprocess.DEVNULL, pass_fds=(), preexec_fn=lambda: os.close(1))
    one_error(proc, "standard output is closed")


def test_a_full_stdout_is_one_error_line() -> None:
    # The demo's programs make sure there are lines to write on a host that has none.
    with open("/dev/full", "wb") as full:
        proc = run(["--demo"], stdout=full)
    one_error(proc, "cannot write standard output: No space left on device")


def piped(fd: int) -> int:
    """Bytes waiting in the pipe read by ``fd``."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def test_a_stderr_nobody_reads_stalls_neither_sampling_nor_prometheus() -> None:
    # A 4 KiB pipe, full before the process starts and never read: every log line it
    # writes (debug: a few per pass) finds stderr full.
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    os.write(write_end, b"\n" * 4096)
    assert piped(read_end) == 4096
    port = free_port()
    proc = subprocess.Popen(
        [*cli_command(), "--demo", "--exporter", "prometheus", "--prometheus-port", str(port),
         "--interval", "0.2", "--log-level", "debug"],
        stdout=subprocess.DEVNULL, stderr=write_end, stdin=subprocess.DEVNULL, env=cli_env(),
    )  # fmt: skip
    os.close(write_end)
    try:
        assert wait_for_port(port, 45, proc), "no Prometheus endpoint"
        assert wait_until(lambda: demo_runs(port) > 0, 30)
        status, took = runs_grow_then_sigterm(proc, port, step=1.0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(read_end)
    assert status == 0
    assert took < 1.5, f"exit took {took:.2f} s after SIGTERM with stderr not read"
