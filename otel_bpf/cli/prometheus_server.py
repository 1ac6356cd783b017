"""The Prometheus scrape endpoint: an HTTP server whose threads and memory stay bounded.

``prometheus_client.start_http_server`` gives every connection a thread of its own for as
long as the client keeps it open: 400 idle connections were 400 more threads.  Here one
thread multiplexes every connection with a selector (accept, read the request, write the
response) and one more renders the exposition, whatever the number of clients:

* at most ``MAX_CONNECTIONS`` connections are open; a new one closes the oldest that has
  not finished sending its request (so a pile of idle connections never locks a scraper
  out), or is closed at once when every slot is busy with a request already read;
* a request line and its headers must arrive within ``REQUEST_TIMEOUT`` seconds of the
  connection, all of it (a client trickling bytes gets no more time than a silent one), and
  fit in ``MAX_REQUEST_BYTES``; anything after the headers (a body) is not read;
* at most ``MAX_RESPONSES`` responses are rendered and held unsent at once, each must be
  taken by its client within ``RESPONSE_TIMEOUT`` seconds; one request per connection,
  which is closed after the response, as prometheus_client's server does.

The status, headers and body come from prometheus_client's own WSGI app
(``make_wsgi_app``), the one ``start_http_server`` serves: the exposition (text or
OpenMetrics by ``Accept``, gzip by ``Accept-Encoding``, ``name[]`` filters) is the
library's, unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import queue
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

from otel_bpf.cli.logs import LOGGER_NAME

log = logging.getLogger(LOGGER_NAME)

MAX_CONNECTIONS = 128
"""Connections open at once (beyond them the oldest still sending its request is closed)."""
REQUEST_TIMEOUT = 10.0
"""Seconds from accepting a connection to the end of its request headers."""
MAX_REQUEST_BYTES = 16 * 1024
"""Request line plus headers; a longer request is answered 431 and closed."""
MAX_RESPONSES = 8
"""Responses being rendered or written at once; other complete requests wait their turn."""
RESPONSE_TIMEOUT = 30.0
"""Seconds a client has to take its whole response."""
LISTEN_BACKLOG = 128
"""Connections the kernel queues before they are accepted."""
SHUTDOWN_TIMEOUT = 1.0
"""How long ``close()`` waits for the server thread."""

_ACCEPTS_PER_WAKE = 64
_RECV_BYTES = 4096
_SEND_BYTES = 256 * 1024
_ACCEPT_PAUSE = 0.2
"""Seconds without accepting after the process ran out of file descriptors."""

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

_READING, _WAITING, _RENDERING, _WRITING = "reading", "waiting", "rendering", "writing"


@dataclass(eq=False)
class _Connection:
    sock: socket.socket
    peer: Any
    deadline: float
    state: str = _READING
    inbox: bytearray = field(default_factory=bytearray)
    request: _Request | None = None
    outbox: memoryview | None = None
    sent: int = 0


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]


class _BadRequest(Exception):
    """The request cannot be served: answered with ``status`` and closed."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def _header_end(data: bytes | bytearray) -> int:
    """Index just past the blank line ending the headers, or -1 while it has not come."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else -1


def parse_request(head: bytes) -> _Request:
    """The request line and headers of ``head`` (without the blank line), as
    ``http.server`` reads them (ISO-8859-1, repeated headers joined with commas)."""
    lines = head.decode("iso-8859-1").replace("\r\n", "\n").split("\n")
    words = lines[0].split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise _BadRequest("400 Bad Request")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            continue  # as lenient as http.server: a malformed header line is not used
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return _Request(method=words[0], target=words[1], version=words[2], headers=headers)


def _environ(request: _Request, server: tuple[str, int], peer: Any) -> dict[str, Any]:
    path, _, query = request.target.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote(path, "iso-8859-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": request.version,
        "REMOTE_ADDR": str(peer[0]) if isinstance(peer, tuple) and peer else "",
        "CONTENT_TYPE": request.headers.get("content-type", ""),
        "CONTENT_LENGTH": "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for name, value in request.headers.items():
        if name not in ("content-type", "content-length"):
            environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def _response(status: str, headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """An HTTP/1.0 response: status line, Date, the headers, Content-Length, the body."""
    lines = [f"HTTP/1.0 {status}", f"Date: {formatdate(usegmt=True)}"]
    lines += [f"{name}: {value}" for name, value in headers if name.lower() != "content-length"]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("iso-8859-1") + body


def _error_response(status: str) -> bytes:
    return _response(
        status, [("Content-Type", "text/plain; charset=utf-8")], f"{status}\n".encode()
    )


def render(app: WsgiApp, request: _Request, server: tuple[str, int], peer: Any) -> bytes:
    """The whole response of ``app`` to ``request``."""
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started[:] = [status, headers]
        return lambda data: None  # the legacy write() callable; the app does not use it

    result = app(_environ(request, server, peer), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not started:
        raise RuntimeError("the WSGI app did not start a response")
    return _response(started[0], started[1], body)


class MetricsServer:
    """Serves ``app`` on ``host:port`` from one I/O thread and one render thread.

    ``start()`` binds and starts both; ``close()`` stops them and closes every connection.
    Binding errors are raised from the constructor (``OSError``).
    """

    def __init__(self, host: str, port: int, app: WsgiApp) -> None:
        self._app = app
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(sockaddr)
            self._listener.listen(LISTEN_BACKLOG)
            self._listener.setblocking(False)
        except BaseException:
            self._listener.close()
            raise
        self.server_address: tuple[str, int] = self._listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._connections: dict[int, _Connection] = {}
        self._waiting: list[_Connection] = []
        self._renders: queue.SimpleQueue[_Connection | None] = queue.SimpleQueue()
        self._rendered: queue.SimpleQueue[tuple[_Connection, bytes]] = queue.SimpleQueue()
        self._responses = 0
        self._accept_paused_until = 0.0
        self._threads: list[threading.Thread] = []
        self._closed = False

    # -- lifetime -------------------------------------------------------------------------

    def start(self) -> MetricsServer:
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        for target, name in ((self._serve, "server"), (self._render_loop, "render")):
            thread = threading.Thread(target=target, name=f"prometheus {name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def close(self) -> None:
        """Stop serving: the I/O thread closes every connection and the listening socket.

        Waits at most ``SHUTDOWN_TIMEOUT`` for it; a render in progress is not waited for
        (its thread is a daemon and drops its result).
        """
        if self._closed:
            return
        self._closed = True
        self._stopping.set()
        self._renders.put(None)
        self._wake()
        if self._threads:
            # The server thread releases everything on its way out.
            self._threads[0].join(SHUTDOWN_TIMEOUT)
        else:
            self._release()

    def _release(self) -> None:
        for conn in list(self._connections.values()):
            self._drop(conn)
        with contextlib.suppress(Exception):
            self._selector.close()
        for sock in (self._listener, self._wake_r, self._wake_w):
            sock.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- the render thread ----------------------------------------------------------------

    def _render_loop(self) -> None:
        while (conn := self._renders.get()) is not None:
            assert conn.request is not None
            try:
                response = render(self._app, conn.request, self.server_address, conn.peer)
            except Exception as exc:
                log.warning("Prometheus scrape failed: %s", exc, exc_info=True)
                response = _error_response("500 Internal Server Error")
            if self._stopping.is_set():
                return
            self._rendered.put((conn, response))
            self._wake()

    # -- the I/O thread -------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while not self._stopping.is_set():
                timeout = self._expire(time.monotonic())
                for key, events in self._selector.select(timeout):
                    if self._stopping.is_set():
                        break
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        conn = key.data
                        if conn.sock.fileno() != -1:
                            self._step(conn, events)
                self._collect_rendered()
                self._dispatch()
        except Exception:  # never seen; the endpoint stops, the run goes on
            log.exception("the Prometheus endpoint stopped")
        finally:
            self._release()

    def _expire(self, now: float) -> float:
        """Close connections past their deadline; the seconds to the next deadline (<= 1)."""
        if self._accept_paused_until and now >= self._accept_paused_until:
            self._accept_paused_until = 0.0
            with contextlib.suppress(KeyError, ValueError):
                self._selector.register(self._listener, selectors.EVENT_READ)
        nearest = now + 1.0
        for conn in list(self._connections.values()):
            if conn.state in (_WAITING, _RENDERING):
                continue
            if conn.deadline <= now:
                if conn.state == _READING:
                    self._answer_and_drop(conn, "408 Request Timeout")
                else:
                    self._drop(conn)
            else:
                nearest = min(nearest, conn.deadline)
        if self._accept_paused_until:
            nearest = min(nearest, self._accept_paused_until)
        return max(0.0, nearest - now)

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_WAKE):
            try:
                sock, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise
                # Out of file descriptors: the listener would stay readable and spin the
                # loop; stop accepting for a moment (the kernel queues new connections).
                log.debug("Prometheus endpoint cannot accept: %s", exc)
                self._selector.unregister(self._listener)
                self._accept_paused_until = time.monotonic() + _ACCEPT_PAUSE
                return
            sock.setblocking(False)
            if len(self._connections) >= MAX_CONNECTIONS and not self._evict_one():
                sock.close()
                continue
            conn = _Connection(sock, peer, time.monotonic() + REQUEST_TIMEOUT)
            self._connections[sock.fileno()] = conn
            self._selector.register(sock, selectors.EVENT_READ, conn)

    def _evict_one(self) -> bool:
        """Close the oldest connection still sending its request (dicts keep accept order)."""
        for conn in self._connections.values():
            if conn.state == _READING:
                self._drop(conn)
                return True
        return False

    def _step(self, conn: _Connection, events: int) -> None:
        try:
            if conn.state == _READING and events & selectors.EVENT_READ:
                self._read(conn)
            elif conn.state == _WRITING and events & selectors.EVENT_WRITE:
                self._write(conn)
        except _BadRequest as bad:
            self._answer_and_drop(conn, bad.status)
        except OSError:
            self._drop(conn)

    def _read(self, conn: _Connection) -> None:
        # Never more than one byte past the limit is read: the inbox stays bounded.
        data = conn.sock.recv(min(_RECV_BYTES, MAX_REQUEST_BYTES + 1 - len(conn.inbox)))
        if not data:  # the client went away before finishing its request
            self._drop(conn)
            return
        conn.inbox += data
        end = _header_end(conn.inbox)
        if end < 0 and len(conn.inbox) <= MAX_REQUEST_BYTES:
            return
        if end < 0 or end > MAX_REQUEST_BYTES:
            raise _BadRequest("431 Request Header Fields Too Large")
        conn.request = parse_request(bytes(conn.inbox[:end].rstrip(b"\r\n")))
        conn.inbox = bytearray()
        conn.state = _WAITING
        self._selector.unregister(conn.sock)
        self._waiting.append(conn)

    def _dispatch(self) -> None:
        """Hand waiting requests to the render thread while response slots are free."""
        while self._waiting and self._responses < MAX_RESPONSES:
            conn = self._waiting.pop(0)
            if conn.sock.fileno() == -1 or self._gone(conn):
                self._drop(conn)
                continue
            conn.state = _RENDERING
            self._responses += 1
            self._renders.put(conn)

    @staticmethod
    def _gone(conn: _Connection) -> bool:
        """Whether the client closed its end while its request waited (no render for it)."""
        try:
            return conn.sock.recv(1, socket.MSG_PEEK) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def _collect_rendered(self) -> None:
        while True:
            try:
                conn, response = self._rendered.get_nowait()
            except queue.Empty:
                return
            if conn.sock.fileno() == -1:
                continue
            conn.state = _WRITING
            conn.outbox = memoryview(response)
            conn.deadline = time.monotonic() + RESPONSE_TIMEOUT
            try:
                self._write(conn)  # most responses fit the socket's buffer at once
                if conn.sock.fileno() != -1:
                    self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)
            except OSError:
                self._drop(conn)

    def _write(self, conn: _Connection) -> None:
        assert conn.outbox is not None
        try:
            while conn.sent < len(conn.outbox):
                conn.sent += conn.sock.send(conn.outbox[conn.sent : conn.sent + _SEND_BYTES])
        except (BlockingIOError, InterruptedError):
            return  # the socket's buffer is full: the selector says when to go on
        with contextlib.suppress(OSError):
            conn.sock.shutdown(socket.SHUT_WR)
        self._drop(conn)

    def _answer_and_drop(self, conn: _Connection, status: str) -> None:
        """Best effort: the answer goes out if it fits the socket's buffer now."""
        with contextlib.suppress(OSError):
            conn.sock.send(_error_response(status))
            conn.sock.shutdown(socket.SHUT_WR)
        self._drop(conn)

    def _drop(self, conn: _Connection) -> None:
        fd = conn.sock.fileno()
        if fd != -1:
            self._connections.pop(fd, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn.sock)
            conn.sock.close()
        if conn.state in (_RENDERING, _WRITING):
            self._responses -= 1
        conn.state = "closed"
        conn.outbox = None
        conn.inbox = bytearray()
        with contextlib.suppress(ValueError):
            self._waiting.remove(conn)


def start_metrics_server(host: str, port: int, registry: Any) -> MetricsServer:
    """Serve ``registry`` for Prometheus on ``host:port`` (``OSError`` if it cannot listen)."""
    from prometheus_client import make_wsgi_app

    return MetricsServer(host, port, make_wsgi_app(registry)).start()
