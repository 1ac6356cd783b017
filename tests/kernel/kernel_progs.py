"""Real BPF programs for the kernel tests: a counting socket filter, named and BTF-named loads."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from otel_bpf.kernel import asm, btf
from otel_bpf.kernel._uapi import Cmd, MapType, ProgType, TestRunAttr
from otel_bpf.kernel.fdinfo import parse_fdinfo
from otel_bpf.kernel.loader import attach_socket_filter, load_program
from otel_bpf.kernel.maps import create_map
from otel_bpf.kernel.syscall import bpf, close

# Return -1: keep the whole packet, so the receiver sees every packet the filter ran on.
PASS_ALL = asm.assemble([asm.mov64_imm(asm.R0, -1), asm.exit_()])


def pass_all_with_map(map_fd: int) -> bytes:
    """A pass-all socket filter that references ``map_fd`` (so the program has a map id)."""
    return asm.assemble([*asm.ld_map_fd(asm.R1, map_fd), asm.mov64_imm(asm.R0, -1), asm.exit_()])


def prog_id_of_fd(fd: int) -> int:
    """The id of one of our program (or link) fds, from fdinfo."""
    with open(f"/proc/self/fdinfo/{fd}") as f:
        return int(parse_fdinfo(f.read())["prog_id"])


def load_named(name: str, insns: bytes = PASS_ALL) -> int:
    """A socket filter with the kernel name ``name`` (cut to 15 characters)."""
    return load_program(ProgType.SOCKET_FILTER, insns, name)


def load_btf_named(full_name: str, insns: bytes = PASS_ALL) -> int:
    """A socket filter whose full name survives through BTF func_info."""
    btf_fd = btf.load_btf(btf.build_func_btf(full_name))
    try:
        return load_program(
            ProgType.SOCKET_FILTER,
            insns,
            full_name,
            btf_fd=btf_fd,
            func_info=btf.func_info_records((0, btf.BUILT_FUNC_TYPE_ID)),
        )
    finally:
        close(btf_fd)


@dataclass
class CountingFilter:
    """A socket filter on a loopback UDP socket: it runs once per packet sent to it."""

    prog_fd: int
    prog_id: int
    map_fd: int
    receiver: socket.socket
    sender: socket.socket

    def send(self, count: int, timeout: float = 5.0) -> None:
        """Send ``count`` datagrams and receive them all (so the filter has run on each)."""
        addr = self.receiver.getsockname()
        self.receiver.settimeout(timeout)
        for i in range(count):
            self.sender.sendto(b"%d" % i, addr)
        for _ in range(count):
            self.receiver.recv(64)


@contextmanager
def counting_filter(name: str = "otel_t_counter") -> Iterator[CountingFilter]:
    """Load, attach and finally unload a counting socket filter with one array map."""
    map_fd = create_map(MapType.ARRAY, 4, 8, 4, "otel_t_map")
    prog_fd = -1
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        prog_fd = load_named(name, pass_all_with_map(map_fd))
        attach_socket_filter(receiver, prog_fd)
        yield CountingFilter(prog_fd, prog_id_of_fd(prog_fd), map_fd, receiver, sender)
    finally:
        receiver.close()
        sender.close()
        if prog_fd >= 0:
            os.close(prog_fd)
        os.close(map_fd)


def bpftool_json(*args: str) -> object:
    """``bpftool -j ARGS`` parsed."""
    out = subprocess.run(
        ["bpftool", "-j", *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    return json.loads(out)


def busy_filter(instructions: int = 20_000) -> bytes:
    """A socket filter that runs ``instructions`` additions before it returns: microseconds
    per run, so a test-run loop spends nearly all its time inside the program."""
    body = [asm.alu64_imm("add", asm.R0, 1)] * instructions
    return asm.assemble([asm.mov64_imm(asm.R0, 0), *body, asm.exit_()])


PACKET = bytes(64)
"""An Ethernet-sized frame of zeros: what a socket filter's test run needs as input."""


@contextmanager
def saturated(prog_fd: int, cpus: list[int], *, repeat: int = 200_000) -> Iterator[None]:
    """Run ``prog_fd`` back to back on every CPU of ``cpus`` (BPF_PROG_TEST_RUN with
    ``repeat``, one thread pinned to each CPU) until the block ends.

    ctypes releases the GIL around each ``bpf()`` call, so every CPU spends nearly all its
    time in the kernel's test-run loop: the program's run time grows at almost one second
    per second per CPU, the most a program can cost.
    """
    import ctypes
    import threading

    data = ctypes.create_string_buffer(PACKET, len(PACKET))
    stop = threading.Event()
    failures: list[BaseException] = []

    def run_on(cpu: int) -> None:
        try:
            os.sched_setaffinity(0, {cpu})  # pid 0: this thread only
            attr = TestRunAttr(
                prog_fd=prog_fd,
                data_size_in=len(PACKET),
                data_in=ctypes.addressof(data),
                repeat=repeat,
            )
            while not stop.is_set():
                bpf(Cmd.PROG_TEST_RUN, attr, "test run")
        except BaseException as exc:  # reported by the caller
            failures.append(exc)

    threads = [threading.Thread(target=run_on, args=(cpu,), daemon=True) for cpu in cpus]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    if failures:
        raise failures[0]


@contextmanager
def many_loaded(count: int, prefix: str) -> Iterator[list[int]]:
    """``count`` pass-all socket filters named ``<prefix><i>``, loaded at the same time (the
    open-files limit raised for them); their fds in load order."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    fds: list[int] = []
    try:
        fds.extend(load_named(f"{prefix}{i}") for i in range(count))
        yield fds
    finally:
        for fd in fds:
            close(fd)


def two_online_cpus() -> tuple[int, int]:
    """The first two CPUs this process may run on (the per-CPU tests move a sender between
    them)."""
    online = sorted(os.sched_getaffinity(0))
    assert len(online) >= 2, "the per-CPU tests need two CPUs to move the sender between"
    return online[0], online[1]


@contextmanager
def pinned(cpu: int) -> Iterator[None]:
    """This thread on ``cpu`` only, for the block."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})  # pid 0: this thread only
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def send_on(f: CountingFilter, cpu: int, count: int) -> None:
    """``count`` datagrams through ``f`` from ``cpu``, so the filter runs there."""
    with pinned(cpu):
        # In batches a receive buffer holds; each returns once every datagram of it was
        # received, so the filter has run on each.
        for start in range(0, count, 50):
            f.send(min(50, count - start))


TREE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
"""The checkout, on a holder child's PYTHONPATH."""


@dataclass
class HoldingChild:
    """A child process that loaded a program and holds it until its stdin closes."""

    process: subprocess.Popen[str]
    prog_id: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        """Close its stdin and see it exit cleanly (it drops what it held)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(30) == 0


def python_child(code: str) -> subprocess.Popen[str]:
    """A child Python running ``code`` from this checkout, its stdin and stdout piped."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": TREE},
    )


@contextmanager
def holding_child(code: str) -> Iterator[HoldingChild]:
    """Run ``code`` in a child Python; it prints the id of the program it holds, then waits
    for stdin to close.  Released at the end of the block if the test did not; killed if the
    block failed."""
    child = python_child(code)
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline()
        assert line.strip().isdigit(), f"holder failed to start: {line!r}"
        held = HoldingChild(child, int(line))
        yield held
        if not child.stdin.closed:
            held.release()
    finally:
        child.kill()
        child.wait(30)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


NETLINK_CHILD = """
import dataclasses, json, os, sys
from otel_bpf.demo import netns
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import AttachType, ProgType
from otel_bpf.kernel.attach_discovery import AttachmentDiscovery
from otel_bpf.kernel.links import create_owned_link
from otel_bpf.kernel.loader import load_owned_program, program_id

XDP_PASS = asm.assemble([asm.mov64_imm(asm.R0, 2), asm.exit_()])
RETURN_0 = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])
netns.unshare_net()
netns.disable_ipv6()
for a, b in (("nla0", "nlb0"), ("nla1", "nlb1")):
    netns.create_veth(a, b)
at = AttachType.XDP
xdp = load_owned_program(ProgType.XDP, XDP_PASS, "otel_nl_xdp", expected_attach_type=at)
xdpl = load_owned_program(ProgType.XDP, XDP_PASS, "otel_nl_xdpl", expected_attach_type=at)
cls = load_owned_program(ProgType.SCHED_CLS, RETURN_0, "otel_nl_cls")
tcx = load_owned_program(ProgType.SCHED_CLS, RETURN_0, "otel_nl_tcx")
netns.set_xdp(xdp, "nla0", generic=True)
netns.add_clsact("nla1")
netns.add_bpf_filter(cls, "nla1", ingress=True, priority=1)
netns.add_bpf_filter(cls, "nla1", ingress=False, priority=2)
links = {
    "xdp_link": netns.attach_xdp(xdpl, "nlb0"),
    "tcx_link": create_owned_link(tcx, netns.ifindex("nlb1"), AttachType.TCX_INGRESS),
}
print(json.dumps({
    "netns": os.stat("/proc/self/ns/net").st_ino,
    "ids": {"xdp": program_id(xdp), "xdpl": program_id(xdpl), "cls": program_id(cls),
            "tcx": program_id(tcx)},
    "ifindex": {n: netns.ifindex(n) for n in ("nla0", "nla1", "nlb0", "nlb1")},
    "links": {k: v.id for k, v in links.items()},
}), flush=True)
for line in sys.stdin:
    cmd = line.strip()
    if cmd == "xdp":
        netns.set_xdp(None, "nla0")
    elif cmd == "ingress":
        netns.delete_filters("nla1", ingress=True, priority=1)
    elif cmd == "egress":
        netns.delete_filters("nla1", ingress=False, priority=2)
    elif cmd in links:
        links.pop(cmd).close()
    elif cmd == "here":
        # Seen from inside: this namespace's devices are plain names.
        found = AttachmentDiscovery(0.0).get({program_id(cls): "sched_cls"})
        print(json.dumps([dataclasses.asdict(a) for a in found[program_id(cls)]]), flush=True)
        continue
    print("ok", flush=True)
"""


@dataclass
class NetlinkChild:
    """A child process in a network namespace of its own, with programs attached there
    (:func:`netlink_child`); ``ask`` sends it a command and reads its answer."""

    process: subprocess.Popen[str]
    state: dict[str, Any]

    def ask(self, command: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline().strip()


@contextmanager
def netlink_child() -> Iterator[NetlinkChild]:
    """A child that unshares a network namespace and attaches there: XDP without a link on
    ``nla0`` (generic mode), cls_bpf filters on ``nla1``'s clsact ingress (priority 1) and
    egress (priority 2), an XDP link on ``nlb0`` and a tcx link on ``nlb1``; its first line
    (``state``) gives the namespace inode, program ids, ifindexes and link ids.  Commands
    detach one each (``xdp``, ``ingress``, ``egress``, ``xdp_link``, ``tcx_link``)."""
    process = python_child(NETLINK_CHILD)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("{"), f"child failed to set up: {line!r}"
        yield NetlinkChild(process, json.loads(line))
    finally:
        process.kill()
        process.wait(30)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()
