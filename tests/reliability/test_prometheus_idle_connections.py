"""Hundreds of idle connections and a few slowloris clients on the Prometheus endpoint of the
real ``bpftop-otel``: its thread count stays under ``THREAD_BOUND``, scrapes are answered
with the demo series within ``SCRAPE_SECONDS``, the trickling clients are cut off at the
request deadline, and SIGTERM still ends the run at once with every connection open.

(prometheus_client's own server took one thread per connection: 400 idle connections were
400 more threads.)
"""

from __future__ import annotations

import contextlib
import re
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import Cli, cli_env, free_port, wait_for_port, wait_until

from otel_bpf.cli.prometheus_server import REQUEST_TIMEOUT

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(150)]

IDLE = 400
SLOWLORIS = 4
THREAD_BOUND = 16
"""The process's threads with every connection open: the sampler's, the endpoint's two."""
SCRAPE_SECONDS = 5.0
EXIT_SECONDS = 5.0


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("Threads:")).split()[1])


def scrape(port: int) -> tuple[float, str]:
    """(seconds from connect to the end of the response, the body)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=SCRAPE_SECONDS) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        chunks = []
        while (chunk := s.recv(65536)) and sum(map(len, chunks)) < 64 << 20:
            chunks.append(chunk)
    response = b"".join(chunks).decode(errors="replace")
    head, _, body = response.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.0 200 OK"), head
    return time.monotonic() - started, body


def demo_runs(body: str) -> list[str]:
    return re.findall(r"^bpf_program_runs_total\{.*otel_demo_.*\} \S+$", body, re.M)


class Slowloris:
    """A client sending a request line, then one header byte every 0.5 s; records when and
    how the server ended the connection."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        self.sock.settimeout(0.5)
        self.opened = time.monotonic()
        self.closed_after: float | None = None
        self.answer = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.sock.sendall(b"a")
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            self.answer += data
            if not data:
                self.closed_after = time.monotonic() - self.opened
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections: half send nothing, half half a request line."""
    sockets: list[socket.socket] = []
    try:
        for i in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if i % 2:
                with contextlib.suppress(OSError):  # closed already to make room
                    s.sendall(b"GET /metr")
            sockets.append(s)
        yield sockets
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(autouse=True)
def enough_fds() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = min(hard, max(soft, IDLE + SLOWLORIS + 256))
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_and_slowloris_connections_cost_no_threads(tmp_path: Path) -> None:
    port = free_port()
    args = ["--demo", "--interval", "1", "--exporter", "prometheus", "--prometheus-port", str(port)]
    with Cli(tmp_path, args, cli_env()) as cli:
        assert wait_for_port(port, 45, cli.proc), cli.describe()
        assert wait_until(lambda: demo_runs(scrape(port)[1]), 30, 0.5), cli.describe()
        before = threads(cli.pid)

        slow: list[Slowloris] = []
        try:
            with idle_connections(port, IDLE):
                # After the idle ones: the newest connections are the last to be closed to
                # make room, so these stay until their deadline.
                slow += [Slowloris(port) for _ in range(SLOWLORIS)]
                seen = [threads(cli.pid)]
                latencies = []
                for _ in range(4):
                    took, body = scrape(port)
                    latencies.append(took)
                    assert demo_runs(body), body[:2000]
                    seen.append(threads(cli.pid))
                    time.sleep(0.5)
                assert max(seen) <= THREAD_BOUND, f"threads {before} -> {seen}"
                assert max(latencies) < SCRAPE_SECONDS, latencies

                # The trickling clients get REQUEST_TIMEOUT from their connection, however
                # steadily they send.
                assert wait_until(
                    lambda: all(c.closed_after is not None for c in slow), REQUEST_TIMEOUT + 10
                ), [c.closed_after for c in slow]
                for client in slow:
                    assert client.closed_after is not None
                    assert client.closed_after < REQUEST_TIMEOUT + 3, client.closed_after
                    assert client.answer.startswith(b"HTTP/1.0 408 Request Timeout"), client.answer

                # A SIGTERM with every idle connection open still ends the run at once.
                slow += [Slowloris(port) for _ in range(SLOWLORIS)]
                signalled = time.monotonic()
                cli.signal(signal.SIGTERM)
                assert cli.wait(30) == 0, cli.describe()
                assert time.monotonic() - signalled < EXIT_SECONDS, cli.describe()
        finally:
            for client in slow:
                client.stop()
    assert "Traceback" not in cli.stderr()
