"""The demo workload's child process: ``python -m otel_bpf.demo.worker``.

It moves into a private network namespace, loads the demo programs, attaches them, reports
``{"ready": true, "programs": {...}}`` as one JSON line on stdout and then drives traffic
until SIGTERM/SIGINT/SIGHUP, a ``{"cmd": "stop"}`` line or end of file on stdin (the parent
went away).  Everything the kernel holds for it (program fds, links, the namespace and its
veth pair) goes when it exits; the one thing that outlives it, its cgroup directory, it
removes itself on the way out and the parent removes again if the child was killed.

Commands on stdin (one JSON object a line), answered with one JSON line each:
``{"cmd": "sent"}`` -> ``{"sent": {name: count}, "failed": {...}}``;
``{"cmd": "rates", "rates": {name: runs_per_sec}}`` -> ``{"rates": {...}}``;
``{"cmd": "stop"}`` -> ``{"stopped": true}``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from otel_bpf.demo import cgroup, lifetime, netns
from otel_bpf.demo import programs as demo
from otel_bpf.demo.traffic import TrafficDriver
from otel_bpf.kernel.fd import KernelFd
from otel_bpf.kernel.loader import VerifierError, attach_socket_filter, load_owned_program

CGROUP_PREFIX = demo.CGROUP_PREFIX
VETH = "otdemo0"
VETH_PEER = "otdemo1"
# IEEE 802 "local experimental" EtherType: no protocol handler in the kernel claims it.
ETH_P_EXPERIMENTAL = 0x88B5
LOOPBACK = "127.0.0.1"


class Workload:
    """Kernel objects and sockets of one worker; :meth:`close` releases all of them."""

    def __init__(self) -> None:
        self.fds: list[KernelFd] = []
        self.sockets: list[socket.socket] = []
        self.program_ids: dict[str, int] = {}
        self.cgroup_dir: str | None = None
        self.senders: dict[str, Callable[[], None]] = {}

    def _sock(self, family: int, kind: int, proto: int = 0) -> socket.socket:
        s = socket.socket(family, kind, proto)
        self.sockets.append(s)
        return s

    def load(self, name: str) -> KernelFd:
        """Load demo program ``name``; return it (held until :meth:`close`) and remember its
        id."""
        p = demo.program(name)
        prog = load_owned_program(
            p.prog_type, p.insns, p.name, expected_attach_type=p.expected_attach_type
        )
        self.fds.append(prog)
        assert prog.id is not None  # load_owned_program reads it
        self.program_ids[name] = prog.id
        return prog

    def _udp_receiver(self, prog_fd: KernelFd | None) -> tuple[str, int]:
        rx = self._sock(socket.AF_INET, socket.SOCK_DGRAM)
        # The smallest buffer: packets the program lets through are never read.
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        rx.bind((LOOPBACK, 0))
        if prog_fd is not None:
            attach_socket_filter(rx, prog_fd)
        addr: tuple[str, int] = rx.getsockname()
        return addr

    def set_up(self) -> None:
        """Namespace, programs, attachments and one sender per program."""
        netns.unshare_net()
        netns.disable_ipv6()
        netns.set_link_up("lo")

        # Socket filters: one run per datagram that reaches their socket.  The sender is
        # created outside the demo cgroup, so the cgroup program never sees these.
        tx = self._sock(socket.AF_INET, socket.SOCK_DGRAM)
        payload = b"otel-demo"
        for name in (demo.SOCK, demo.SLOW):
            dest = self._udp_receiver(self.load(name))
            self.senders[name] = _sender(tx, payload, dest)

        # XDP on one end of a veth pair, frames injected at the other end.  The namespace
        # has no addresses and no IPv6, so the kernel sends nothing there by itself.
        netns.create_veth(VETH, VETH_PEER)
        netns.set_link_up(VETH)
        netns.set_link_up(VETH_PEER)
        self.fds.append(netns.attach_xdp(self.load(demo.XDP), VETH))
        pkt = self._sock(socket.AF_PACKET, socket.SOCK_RAW, 0)
        pkt.bind((VETH_PEER, 0))
        frame = (
            netns.mac_address(VETH)
            + netns.mac_address(VETH_PEER)
            + ETH_P_EXPERIMENTAL.to_bytes(2, "big")
            + payload.ljust(46, b"\0")
        )
        self.senders[demo.XDP] = _frame_sender(pkt, frame)

        # cgroup_skb egress: runs for packets of sockets created inside the cgroup.  The
        # process joins it only while creating that one socket, then goes back.
        cgskb_fd = self.load(demo.CGROUP_SKB)
        home = cgroup.current_cgroup()
        self.cgroup_dir = cgroup.create(f"{CGROUP_PREFIX}{os.getpid()}")
        cg_fd = KernelFd(cgroup.open_dir(self.cgroup_dir), "cgroup")
        self.fds.append(cg_fd)
        self.fds.append(cgroup.attach_program(cgskb_fd, cg_fd, demo.BPF_CGROUP_INET_EGRESS))
        cgroup.join(self.cgroup_dir)
        try:
            cg_tx = self._sock(socket.AF_INET, socket.SOCK_DGRAM)
        finally:
            cgroup.join(home)
        self.senders[demo.CGROUP_SKB] = _sender(cg_tx, payload, self._udp_receiver(None))

    def close(self) -> None:
        """Close sockets, links and programs, then remove the cgroup directory."""
        for s in self.sockets:
            s.close()
        for fd in reversed(self.fds):
            with contextlib.suppress(OSError):
                fd.close()
        self.sockets.clear()
        self.fds.clear()
        if self.cgroup_dir is not None:
            with contextlib.suppress(OSError):
                cgroup.remove(self.cgroup_dir)
            self.cgroup_dir = None


def _sender(sock: socket.socket, payload: bytes, dest: tuple[str, int]) -> Callable[[], None]:
    def send() -> None:
        sock.sendto(payload, dest)

    return send


def _frame_sender(sock: socket.socket, frame: bytes) -> Callable[[], None]:
    def send() -> None:
        sock.send(frame)

    return send


class Worker:
    """The worker's main loop: pace traffic, answer commands, stop on a signal or EOF."""

    def __init__(self, workload: Workload, rates: dict[str, float]) -> None:
        self.workload = workload
        self.driver = TrafficDriver(workload.senders, rates, now=time.monotonic())
        self.stopping = False
        self._inbuf = b""

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        """Signal handler: finish the current tick, then leave :meth:`run`."""
        self.stopping = True

    def run(self) -> None:
        """Send, wait for the next tick or a command, repeat until asked to stop."""
        while not self.stopping:
            now = time.monotonic()
            self.driver.step(now)
            timeout = max(0.0, self.driver.next_step(now) - time.monotonic())
            try:
                readable, _, _ = select.select([0], [], [], timeout)
            except InterruptedError:
                continue
            if readable:
                self._read_commands()

    def _read_commands(self) -> None:
        data = os.read(0, 65536)
        if not data:
            self.stopping = True  # the parent closed our stdin or died
            return
        self._inbuf += data
        while b"\n" in self._inbuf:
            line, self._inbuf = self._inbuf.split(b"\n", 1)
            if line.strip():
                self._command(line)

    def _command(self, line: bytes) -> None:
        reply: dict[str, Any]
        try:
            msg = json.loads(line)
            cmd = msg.get("cmd")
            if cmd == "sent":
                reply = {"sent": self.driver.sent(), "failed": self.driver.failed()}
            elif cmd == "rates":
                self.driver.set_rates(msg.get("rates", {}), now=time.monotonic())
                reply = {"rates": self.driver.rates()}
            elif cmd == "stop":
                self.stopping = True
                reply = {"stopped": True}
            else:
                reply = {"error": f"unknown command {cmd!r}"}
        except (ValueError, AttributeError, TypeError) as err:
            reply = {"error": str(err)}
        emit(reply)


def emit(msg: dict[str, Any]) -> None:
    """Write one JSON line to stdout (the parent's pipe)."""
    data = (json.dumps(msg, separators=(",", ":")) + "\n").encode()
    while data:
        n = os.write(1, data)
        data = data[n:]


def one_line(err: BaseException) -> str:
    """A one-line reason for ``err`` (verifier logs and tracebacks stay out)."""
    if isinstance(err, VerifierError):
        text = str(err.strerror or err)
    elif isinstance(err, OSError) and err.strerror:
        text = err.strerror
        if err.filename:
            text = f"{err.filename}: {text}"
    else:
        text = f"{type(err).__name__}: {err}"
    return text.splitlines()[0] if text else type(err).__name__


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m otel_bpf.demo.worker")
    parser.add_argument("--parent", type=int, default=0, help="pid of the controlling process")
    parser.add_argument(
        "--pdeathsig", action="store_true", help="exit by SIGTERM when the parent exits"
    )
    parser.add_argument("--rates", default="{}", help="JSON object: program name -> runs/s")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process; returns its exit status."""
    args = parse_args(argv)
    workload = Workload()
    worker: Worker | None = None
    stop_early = False

    def early_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_early
        stop_early = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, early_stop)
    try:
        if args.pdeathsig and not lifetime.die_with_parent(args.parent):
            return 1
        rates = {demo.canonical_name(k): float(v) for k, v in json.loads(args.rates).items()}
        rates = {**demo.DEFAULT_RATES, **rates}
        cgroup.remove_stale(CGROUP_PREFIX)
        workload.set_up()
        worker = Worker(workload, rates)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, worker.request_stop)
        if stop_early:
            return 0
        emit(
            {
                "ready": True,
                "pid": os.getpid(),
                "programs": workload.program_ids,
                "rates": worker.driver.rates(),
                "cgroup": workload.cgroup_dir,
            }
        )
        worker.run()
        return 0
    except BrokenPipeError:
        return 0
    except Exception as err:  # reported to the parent as one line, not a traceback
        with contextlib.suppress(OSError):
            emit({"error": one_line(err)})
        return 1
    finally:
        workload.close()


if __name__ == "__main__":
    sys.exit(main())
