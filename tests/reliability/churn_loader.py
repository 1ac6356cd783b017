"""Load and unload uniquely named socket filters at a steady rate (run as a process).

``python churn_loader.py --total N --rate R --alive K --prefix P --status FILE``: program i
is named ``P<i>``, attached to its own loopback UDP socket and run once (one datagram), and
the oldest is closed whenever more than K are loaded.  Progress goes to FILE as JSON; after
the last load the K newest stay loaded, their ids are in FILE with ``"done": true``, and
the process waits for SIGTERM (or stdin to close) before unloading them.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernel"))

from kernel_progs import PASS_ALL, prog_id_of_fd

from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.loader import attach_socket_filter, load_program


def write_status(path: Path, **status: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status))
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--total", type=int, required=True)
    p.add_argument("--rate", type=float, required=True)
    p.add_argument("--alive", type=int, required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--status", type=Path, required=True)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    live: collections.deque[tuple[int, int, socket.socket]] = collections.deque()
    loaded = unloaded = 0
    started = time.monotonic()
    for i in range(args.total):
        # Pace against the start time, so a slow moment is caught up afterwards.
        delay = started + i / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        fd = load_program(ProgType.SOCKET_FILTER, PASS_ALL, f"{args.prefix}{i}")
        receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        receiver.bind(("127.0.0.1", 0))
        attach_socket_filter(receiver, fd)
        sender.sendto(b"x", receiver.getsockname())
        live.append((fd, prog_id_of_fd(fd), receiver))
        loaded += 1
        while len(live) > args.alive:
            old_fd, _, old_sock = live.popleft()
            old_sock.close()
            os.close(old_fd)
            unloaded += 1
        if i % 50 == 0:
            write_status(args.status, loaded=loaded, unloaded=unloaded,
                         seconds=time.monotonic() - started, done=False)  # fmt: skip
    write_status(
        args.status,
        loaded=loaded,
        unloaded=unloaded,
        seconds=time.monotonic() - started,
        done=True,
        alive_ids=[prog_id for _, prog_id, _ in live],
    )
    sys.stdin.read()  # until the test closes our stdin (or SIGTERM)


if __name__ == "__main__":
    main()
