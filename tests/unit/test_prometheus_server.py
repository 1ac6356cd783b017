"""The Prometheus endpoint's server: prometheus_client's exposition, byte for byte, from a
fixed pair of threads whatever the connections do (idle, trickling, oversized, not reading).

Every socket has a timeout and every wait is bounded; the limits are patched small where a
test needs to reach them.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from otel_bpf.cli import prometheus_server
from otel_bpf.cli.prometheus_server import MetricsServer, parse_request, start_metrics_server

IO_TIMEOUT = 5.0


def registry() -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=True)
    runs = Counter("bpf_program_runs", "Runs", ["bpf_program_name"], registry=reg)
    runs.labels("a").inc(3)
    runs.labels('quote"d\nname').inc(1)
    Gauge("bpf_stats_enabled", "Stats", registry=reg).set(1)
    return reg


@contextlib.contextmanager
def serving(app: Any = None, reg: CollectorRegistry | None = None) -> Iterator[MetricsServer]:
    if app is None:
        server = start_metrics_server("127.0.0.1", 0, reg or registry())
    else:
        server = MetricsServer("127.0.0.1", 0, app).start()
    try:
        yield server
    finally:
        server.close()


def connect(server: MetricsServer, timeout: float = IO_TIMEOUT) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=timeout)


def read_all(sock: socket.socket, limit: int = 64 << 20) -> bytes:
    """Everything until the server closes (bounded by the socket's timeout and ``limit``)."""
    chunks: list[bytes] = []
    size = 0
    with contextlib.suppress(ConnectionResetError):
        while size < limit and (chunk := sock.recv(65536)):
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


def exchange(address: tuple[str, int], request: bytes) -> bytes:
    with socket.create_connection(address, timeout=IO_TIMEOUT) as s:
        s.sendall(request)
        return read_all(s)


def split(response: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status, *lines = head.decode("iso-8859-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return status, headers, body


def scrape(server: MetricsServer) -> tuple[str, dict[str, str], bytes]:
    return split(exchange(server.server_address, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n"))


def server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("prometheus ")]


def eventually(predicate: Callable[[], Any], timeout: float = IO_TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return result


REQUESTS = [
    b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nAccept: text/plain;version=1.0.0;escaping=allow-utf-8\r\n\r\n",
    b"GET /metrics?name[]=bpf_stats_enabled HTTP/1.1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n",
    b"GET /favicon.ico HTTP/1.1\r\n\r\n",
    b"OPTIONS /metrics HTTP/1.1\r\n\r\n",
    b"HEAD /metrics HTTP/1.1\r\n\r\n",
    b"POST /metrics HTTP/1.1\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", REQUESTS, ids=lambda r: r.split(b"\r\n")[0].decode())
def test_answers_exactly_as_prometheus_client_server(request_bytes: bytes) -> None:
    reg = registry()
    theirs, _thread = start_http_server(0, addr="127.0.0.1", registry=reg)
    try:
        expected = split(exchange(theirs.server_address[:2], request_bytes))
    finally:
        theirs.shutdown()
        theirs.server_close()
    with serving(reg=reg) as ours:
        got = split(exchange(ours.server_address, request_bytes))
    # Date, Server and Connection say nothing about the metrics.
    ignored = {"Date", "Server", "Connection"}
    assert got[0] == expected[0]
    assert {k: v for k, v in got[1].items() if k not in ignored} == {
        k: v for k, v in expected[1].items() if k not in ignored
    }
    if got[1].get("Content-Encoding") == "gzip":  # the gzip header carries a timestamp
        assert gzip.decompress(got[2]) == gzip.decompress(expected[2])
    else:
        assert got[2] == expected[2]
    assert got[1]["Connection"] == "close"


def test_idle_connections_take_no_thread_and_scrapes_go_on() -> None:
    with serving() as server:
        assert len(server_threads()) == 2
        before = threading.active_count()
        idle = []
        try:
            for i in range(200):
                s = connect(server)
                if i % 2:
                    s.sendall(b"GET /metr")
                idle.append(s)
            time.sleep(0.3)
            assert threading.active_count() == before
            assert len(server._connections) <= prometheus_server.MAX_CONNECTIONS
            started = time.monotonic()
            status, _, body = scrape(server)
            assert status == "HTTP/1.0 200 OK"
            assert b"bpf_program_runs_total" in body
            assert time.monotonic() - started < 2.0
            assert threading.active_count() == before
        finally:
            for s in idle:
                s.close()


def test_the_oldest_unfinished_request_makes_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus_server, "MAX_CONNECTIONS", 3)
    with serving() as server:
        idle = [connect(server) for _ in range(3)]
        try:
            time.sleep(0.2)
            assert scrape(server)[0] == "HTTP/1.0 200 OK"
            # The first idle connection was closed for the scrape; the others are still open.
            assert read_all(idle[0]) == b""
            for s in idle[1:]:
                s.settimeout(0.2)
                with pytest.raises(TimeoutError):
                    s.recv(1)
        finally:
            for s in idle:
                s.close()


def test_a_trickling_client_gets_no_more_time_than_a_silent_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(prometheus_server, "REQUEST_TIMEOUT", 0.5)
    with serving() as server, connect(server) as trickling, connect(server) as silent:
        started = time.monotonic()
        trickling.sendall(b"GET /metrics HTTP/1.1\r\n")
        trickling.settimeout(0.1)
        answer = b""
        while time.monotonic() - started < 3.0:
            with contextlib.suppress(OSError):
                trickling.sendall(b"X")
            try:
                answer = trickling.recv(4096)
                break
            except TimeoutError:
                continue
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.0 408 Request Timeout"), answer
        assert 0.4 < took < 1.5, took
        assert read_all(silent).startswith(b"HTTP/1.0 408 Request Timeout")


def test_oversized_and_malformed_requests_are_refused() -> None:
    with serving() as server:
        limit = prometheus_server.MAX_REQUEST_BYTES
        with connect(server) as s:
            # No end of headers in sight: refused once the limit is passed, the rest unread.
            s.sendall(b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * (limit + 1000))
            assert split(read_all(s))[0] == "HTTP/1.0 431 Request Header Fields Too Large"
        for bad in (b"GET /\r\n\r\n", b"\x00\x01\x02\r\n\r\n", b"GET / FTP/1.0\r\n\r\n"):
            assert split(exchange(server.server_address, bad))[0] == "HTTP/1.0 400 Bad Request"
        assert scrape(server)[0] == "HTTP/1.0 200 OK"


def test_a_client_that_does_not_read_loses_its_response_and_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(prometheus_server, "MAX_RESPONSES", 1)
    monkeypatch.setattr(prometheus_server, "RESPONSE_TIMEOUT", 0.5)
    body = b"x" * (16 << 20)  # far more than both sockets' buffers

    def big(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    with serving(big) as server:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.settimeout(IO_TIMEOUT)
        stalled.connect(server.server_address)
        with stalled:
            stalled.sendall(b"GET / HTTP/1.1\r\n\r\n")
            time.sleep(0.2)  # its response holds the only slot now
            started = time.monotonic()
            response = exchange(server.server_address, b"GET / HTTP/1.1\r\n\r\n")
            assert split(response)[2] == body
            assert time.monotonic() - started < IO_TIMEOUT
            assert len(read_all(stalled)) < len(body)


def test_a_failing_render_is_a_500_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    def broken(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        raise RuntimeError("collection failed")

    with serving(broken) as server, caplog.at_level(logging.WARNING):
        status, _, body = split(exchange(server.server_address, b"GET / HTTP/1.1\r\n\r\n"))
    assert status == "HTTP/1.0 500 Internal Server Error"
    assert b"collection failed" not in body
    assert [r.getMessage() for r in caplog.records] == [
        "Prometheus scrape failed: collection failed"
    ]


def test_close_is_prompt_with_connections_open_and_a_render_running() -> None:
    rendering, release = threading.Event(), threading.Event()

    def slow(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        rendering.set()
        release.wait(IO_TIMEOUT)
        start_response("200 OK", [])
        return [b""]

    server = MetricsServer("127.0.0.1", 0, slow).start()
    idle = [connect(server) for _ in range(100)]
    try:
        with connect(server) as waiting:
            waiting.sendall(b"GET / HTTP/1.1\r\n\r\n")
            assert rendering.wait(IO_TIMEOUT)
            started = time.monotonic()
            server.close()
            assert time.monotonic() - started < 1.0
            assert not any(t.name == "prometheus server" for t in server_threads())
            assert read_all(waiting) == b""
            assert all(read_all(s) == b"" for s in idle[-10:])
            with pytest.raises(OSError), connect(server, timeout=1.0):
                pass
    finally:
        release.set()
        for s in idle:
            s.close()
    assert eventually(lambda: not server_threads())


def test_a_request_whose_client_left_is_not_rendered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus_server, "MAX_RESPONSES", 1)
    rendering, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        rendering.set()
        release.wait(IO_TIMEOUT)
        start_response("200 OK", [])
        return [b"ok"]

    with serving(app) as server, connect(server) as first:
        first.sendall(b"GET /first HTTP/1.1\r\n\r\n")
        assert rendering.wait(IO_TIMEOUT)
        with connect(server) as left:
            left.sendall(b"GET /left HTTP/1.1\r\n\r\n")
            time.sleep(0.2)  # read, and waiting for the slot
        time.sleep(0.1)
        release.set()
        assert split(read_all(first))[2] == b"ok"
        assert split(exchange(server.server_address, b"GET /third HTTP/1.1\r\n\r\n"))[2] == b"ok"
    assert calls == ["/first", "/third"]


def test_request_parsing() -> None:
    request = parse_request(
        b"GET /metrics?name[]=a HTTP/1.1\r\nAccept: a\r\naccept: b\r\nbroken line\r\n"
        b"Accept-Encoding:  gzip \r\n"
    )
    assert (request.method, request.target, request.version) == (
        "GET",
        "/metrics?name[]=a",
        "HTTP/1.1",
    )
    assert request.headers == {"accept": "a,b", "accept-encoding": "gzip"}
    assert parse_request(b"GET / HTTP/1.0\n\xe9: \xff").headers == {"\xe9": "\xff"}


def test_a_busy_port_is_an_oserror() -> None:
    with serving() as server, pytest.raises(OSError):
        MetricsServer("127.0.0.1", server.server_address[1], lambda e, s: [b""])
