"""Programs attached to processes' sockets, found on the real kernel by the ``sockets``
source (an ``iter/task_file`` program calling ``bpf_sock_from_file``): socket filters on a
child's socket (shared with a forked grandchild, and with a thread), reuseport programs on a
group of SO_REUSEPORT sockets, classic BPF filters left out, closed sockets gone."""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import replace

import pytest
from kernel_progs import PASS_ALL, holding_child

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import SO_ATTACH_REUSEPORT_EBPF, AttachType, ProgType
from otel_bpf.kernel.attach import Names
from otel_bpf.kernel.attach_discovery import AttachmentDiscovery, DiscoveryContext
from otel_bpf.kernel.attach_sockets import SocketSource
from otel_bpf.kernel.fd import KernelFd
from otel_bpf.kernel.iterator.sockets import PROGRAM_NAME, SocketsIterator
from otel_bpf.kernel.iterator.source import IteratorSource
from otel_bpf.kernel.loader import attach_socket_filter, load_owned_program
from otel_bpf.kernel.programs import SyscallSource
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.records import Attachment

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

PREFIX = f"otel_sk{os.getpid() % 10000}_"
SK_PASS = asm.assemble([asm.mov64_imm(asm.R0, 1), asm.exit_()])
# include/uapi/asm-generic/socket.h
SO_ATTACH_FILTER = 26
SO_ATTACH_REUSEPORT_CBPF = 51


@pytest.fixture(scope="module")
def source() -> Iterator[SocketSource]:
    s = SocketSource()
    yield s
    s.close()


def read(source: SocketSource, programs: Mapping[int, str]) -> dict[int, list[Attachment]]:
    found = source.read(DiscoveryContext(Names(cgroup_root="/sys/fs/cgroup"), programs))
    return {p: list(a) for p, a in found.items()}


def comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().rstrip("\n")


def sock_attachment(pid: int, fd: int, attach_type: str | None = None) -> Attachment:
    return Attachment(
        kind="socket",
        via="socket",
        link_id=None,
        attach_type=attach_type,
        target=f"pid {pid} fd {fd}",
        pid=pid,
        fd=fd,
        comm=comm(pid),
    )


def load(name: str, prog_type: int = ProgType.SOCKET_FILTER, expected: int = 0) -> KernelFd:
    insns = PASS_ALL if prog_type == ProgType.SOCKET_FILTER else SK_PASS
    return load_owned_program(prog_type, insns, PREFIX + name, expected_attach_type=expected)


# One classic BPF instruction, ``ret #-1`` (BPF_RET | BPF_K): keep the whole packet.
CLASSIC_RET_ALL = ctypes.create_string_buffer(struct.pack("=HBBI", 0x06, 0, 0, 0xFFFFFFFF), 8)


def classic_filter() -> bytes:
    """The ``struct sock_fprog`` pointing at :data:`CLASSIC_RET_ALL` (which the module keeps
    alive: the kernel copies it during setsockopt)."""
    return struct.pack("=HxxxxxxQ", 1, ctypes.addressof(CLASSIC_RET_ALL))


# The child loads a filter, attaches it to a UDP socket, starts a thread (which shares its
# file table) and forks a grandchild (which inherits the socket): one socket, two processes,
# three tasks.  It prints the program id, the socket's fd and the grandchild's pid.
CHILD = f"""
import os, socket, sys, threading
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.loader import attach_socket_filter, load_owned_program
prog = load_owned_program(
    ProgType.SOCKET_FILTER,
    asm.assemble([asm.mov64_imm(asm.R0, -1), asm.exit_()]),
    "{PREFIX}child",
)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
attach_socket_filter(s, prog)
threading.Thread(target=threading.Event().wait, daemon=True).start()
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.read(r, 1)  # until the child closes its end
    os._exit(0)
os.close(r)
print(prog.id, s.fileno(), pid, sep="\\n", flush=True)
sys.stdin.read()
os.close(w)
os.waitpid(pid, 0)
"""


def test_filter_on_a_child_socket_is_reported_per_process(source: SocketSource) -> None:
    with holding_child(CHILD) as child:
        assert child.process.stdout is not None
        fd = int(child.process.stdout.readline())
        grandchild = int(child.process.stdout.readline())
        found = read(source, {child.prog_id: "socket_filter"})
        # Once per process holding the socket: the thread sharing the child's file table
        # adds nothing, the forked grandchild is a second holder.
        assert found[child.prog_id] == sorted(
            [sock_attachment(child.pid, fd), sock_attachment(grandchild, fd)],
            key=lambda a: a.pid or 0,
        )
        child.release()
    assert child.prog_id not in read(source, {child.prog_id: "socket_filter"})


def test_closed_socket_is_no_longer_reported(source: SocketSource) -> None:
    with load("close") as prog, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        attach_socket_filter(s, prog)
        fd = s.fileno()
        assert read(source, {prog.id or 0: "socket_filter"})[prog.id or 0] == [
            sock_attachment(os.getpid(), fd)
        ]
        s.close()
        # The program is still loaded (we hold it), attached nowhere.
        assert (prog.id or 0) not in read(source, {prog.id or 0: "socket_filter"})


def reuseport_group(kind: int, count: int) -> list[socket.socket]:
    """``count`` sockets of one SO_REUSEPORT group on a free port of 127.0.0.1."""
    socks: list[socket.socket] = []
    port = 0
    for _ in range(count):
        s = socket.socket(socket.AF_INET, kind)
        socks.append(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        port = s.getsockname()[1]
        if kind == socket.SOCK_STREAM:
            s.listen(1)
    return socks


@pytest.mark.parametrize(
    ("prog_type", "expected", "attach_type"),
    [
        (
            ProgType.SK_REUSEPORT,
            AttachType.SK_REUSEPORT_SELECT_OR_MIGRATE,
            "sk_reuseport_select_or_migrate",
        ),
        (ProgType.SK_REUSEPORT, 0, "sk_reuseport_select"),  # the kernel's default
        (ProgType.SOCKET_FILTER, 0, "sk_reuseport_select"),
    ],
    ids=["sk_reuseport_migrate", "sk_reuseport", "socket_filter"],
)
@pytest.mark.parametrize("kind", [socket.SOCK_DGRAM, socket.SOCK_STREAM], ids=["udp", "tcp"])
def test_reuseport_program_on_every_socket_of_the_group(
    source: SocketSource, prog_type: int, expected: int, attach_type: str, kind: int
) -> None:
    type_name = "sk_reuseport" if prog_type == ProgType.SK_REUSEPORT else "socket_filter"
    with ExitStack() as stack:
        prog = stack.enter_context(load("reuse", prog_type, expected))
        socks = [stack.enter_context(s) for s in reuseport_group(kind, 3)]
        # Attached through one socket, the program serves the whole group.
        socks[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, prog.fileno())
        found = read(source, {prog.id or 0: type_name})
        assert found[prog.id or 0] == [
            sock_attachment(os.getpid(), s.fileno(), attach_type) for s in socks
        ]


def test_classic_filters_are_not_reported() -> None:
    with ExitStack() as stack, SocketsIterator() as it:
        plain = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        plain.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, classic_filter())
        group = [stack.enter_context(s) for s in reuseport_group(socket.SOCK_DGRAM, 2)]
        group[0].setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, classic_filter())
        # An eBPF filter beside them, so the walk is seen to report this process.
        prog = stack.enter_context(load("beside"))
        ebpf = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        attach_socket_filter(ebpf, prog)
        mine = [(f.fd, f.prog_id) for f in it.read() if f.pid == os.getpid()]
        assert mine == [(ebpf.fileno(), prog.id)]


def test_discovery_reports_the_socket_after_the_links() -> None:
    with ExitStack() as stack:
        prog = stack.enter_context(load("disc"))
        s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        attach_socket_filter(s, prog)
        discovery = AttachmentDiscovery()
        stack.callback(discovery.close)
        errors: list[str] = []
        found = discovery.get({prog.id or 0: "socket_filter"}, errors)
        assert found[prog.id or 0] == (sock_attachment(os.getpid(), s.fileno()),), errors


def test_accepted_connections_inherit_the_listeners_filter(source: SocketSource) -> None:
    # The kernel copies a listening socket's filter to each connection it accepts, and runs
    # it there: each accepted socket is an attachment of its own.
    with ExitStack() as stack:
        prog = stack.enter_context(load("accept"))
        listener = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        attach_socket_filter(listener, prog)
        client = stack.enter_context(socket.create_connection(listener.getsockname(), 5))
        accepted = stack.enter_context(listener.accept()[0])
        found = read(source, {prog.id or 0: "socket_filter"})
        assert found[prog.id or 0] == [
            sock_attachment(os.getpid(), listener.fileno()),
            sock_attachment(os.getpid(), accepted.fileno()),
        ], client


@pytest.mark.parametrize("path", ["syscall", "iterator"])
def test_the_sources_own_iterator_is_not_reported_as_a_host_program(path: str) -> None:
    opened = SyscallSource() if path == "syscall" else IteratorSource()
    with ExitStack() as stack:
        source = stack.enter_context(opened)
        prog = stack.enter_context(load("own"))
        s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        attach_socket_filter(s, prog)
        options = SourceOptions(attachments=True, memlock=False)
        # The first pass lists the programs before its discovery loads the sockets
        # iterator (other sockets iterators, such as this module's, are listed as any
        # program); the second would list it.
        first = source.read(options).records
        others = {r.id for r in first if r.name == PROGRAM_NAME}
        assert any(r.id == prog.id and r.attachments for r in first)
        second = source.read(options).records
        assert {r.id for r in second if r.name == PROGRAM_NAME} == others
        mine = next(r for r in second if r.id == prog.id)
        assert mine.attachments == (sock_attachment(os.getpid(), s.fileno()),)
        # Asked for, it shows like the iterator path's own programs.
        everything = source.read(replace(options, include_self=True)).records
        assert len({r.id for r in everything if r.name == PROGRAM_NAME} - others) == 1
