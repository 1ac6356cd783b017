"""What idle connections cost the Prometheus endpoint of ``bpftop-otel`` (as root).

    python benchmarks/bench_prometheus_idle.py [--connections 400] [--slowloris 4]
                                               [--scrapes 5] [--programs 0]

The script starts ``bpftop-otel --exporter prometheus --interval 1`` (with ``--programs``
tiny socket filters loaded besides the host's own), reads its thread count (``Threads`` in
``/proc/PID/status``) and resident size (``VmRSS``), then opens ``--connections`` TCP
connections that send nothing or half a request line, plus ``--slowloris`` that send one
header byte a second, and reads both figures again.  While they are open it times
``--scrapes`` scrapes of ``/metrics`` (connect to the last byte of the response), and at the
end the time from SIGTERM to exit with the connections still open.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator

from _bench import bpftop_otel, cli_env, free_port, loaded_filters, machine, raise_nofile, wait_port


def status(pid: int) -> tuple[int, int]:
    """(threads, VmRSS in KiB) of ``pid``."""
    threads = rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                threads = int(line.split()[1])
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return threads, rss


def scrape(port: int, timeout: float = 30.0) -> tuple[float, bytes]:
    """(seconds from connect to the response's last byte, the response)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return time.monotonic() - start, b"".join(chunks)


@contextlib.contextmanager
def idle_connections(port: int, count: int, slowloris: int) -> Iterator[list[socket.socket]]:
    """``count`` silent or half-request connections and ``slowloris`` trickling ones."""
    sockets: list[socket.socket] = []
    stop = threading.Event()

    def trickle(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            while not stop.wait(1.0):
                s.sendall(b"X")

    trickles = []
    try:
        for i in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(5)
            with contextlib.suppress(OSError):  # a full accept queue: count it as opened
                s.connect(("127.0.0.1", port))
                if i % 2:
                    s.sendall(b"GET /metr")
            sockets.append(s)
        for _ in range(slowloris):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            sockets.append(s)
            t = threading.Thread(target=trickle, args=(s,), daemon=True)
            t.start()
            trickles.append(t)
        yield sockets
    finally:
        stop.set()
        for t in trickles:
            t.join(5)
        for s in sockets:
            s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--slowloris", type=int, default=4)
    parser.add_argument("--scrapes", type=int, default=5)
    parser.add_argument("--programs", type=int, default=0)
    args = parser.parse_args()
    raise_nofile(args.connections + args.slowloris + args.programs + 256)
    print(machine())
    port = free_port()
    command = [*bpftop_otel(), "--exporter", "prometheus", "--prometheus-port", str(port),
               "--interval", "1"]  # fmt: skip
    with loaded_filters(args.programs), open(os.devnull, "wb") as null:
        proc = subprocess.Popen(command, stdout=null, stderr=null, env=cli_env())
        try:
            if not wait_port(port, 30):
                raise SystemExit("no scrape endpoint")
            time.sleep(3)
            seconds, body = scrape(port)
            threads0, rss0 = status(proc.pid)
            print(f"idle: {threads0} threads, VmRSS {rss0 / 1024:.1f} MB, "
                  f"scrape {seconds * 1000:.0f} ms, {len(body)} bytes")  # fmt: skip
            with idle_connections(port, args.connections, args.slowloris):
                time.sleep(3)
                threads1, rss1 = status(proc.pid)
                latencies = []
                for _ in range(args.scrapes):
                    seconds, body = scrape(port)
                    assert b"bpf_" in body, body[:200]
                    latencies.append(seconds)
                    time.sleep(0.5)
                threads2, rss2 = status(proc.pid)
                print(f"{args.connections} idle + {args.slowloris} slowloris connections: "
                      f"{max(threads1, threads2)} threads, VmRSS "
                      f"{max(rss1, rss2) / 1024:.1f} MB; scrape median "
                      f"{statistics.median(latencies) * 1000:.0f} ms, "
                      f"max {max(latencies) * 1000:.0f} ms")  # fmt: skip
                start = time.monotonic()
                proc.terminate()
                code = proc.wait(60)
                print(f"SIGTERM to exit with the connections open: "
                      f"{time.monotonic() - start:.2f} s, exit {code}")  # fmt: skip
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
