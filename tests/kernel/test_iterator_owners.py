"""Owners through ``iter/task_file`` against the /proc scan, on the real kernel.

The compared sets are (prog_id, pid, via).  Processes of other users of the machine come and
go during a comparison, so the exact check covers the processes this test controls (this
one, a child holding inherited fds, a child holding programs of its own) and, for the rest,
the pairs that two /proc scans around the iterator reading agree on.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import subprocess
import sys
from collections.abc import Iterator

import pytest
from kernel_progs import load_named, prog_id_of_fd

from otel_bpf.kernel._uapi import Cmd, IterCreateAttr
from otel_bpf.kernel.iterator.owners import (
    KIND_TASK,
    MARK,
    PROG_ENTRY_SIZE,
    TASK_HEADER,
    OwnersIterator,
    OwnersLayout,
    owners_from_records,
)
from otel_bpf.kernel.iterator.source import IteratorSource
from otel_bpf.kernel.owners import scan_owners
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.kernel.syscall import bpf
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf
from otel_bpf.records import Owner

pytestmark = pytest.mark.kernel

Pairs = set[tuple[int, int, tuple[str, ...]]]

CHILD = """
import sys
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.loader import load_program, program_id
from otel_bpf.kernel.source import SourceOptions
fds = [
    load_program(ProgType.SOCKET_FILTER, asm.assemble([asm.mov64_imm(0, -1), asm.exit_()]),
                 f"otel_t_child{i}")
    for i in range(int(sys.argv[1]))
]
print(" ".join(str(program_id(fd)) for fd in fds), flush=True)
sys.stdin.read()
"""


READY_THEN_WAIT = "import sys; print('ready', flush=True); sys.stdin.read()"

# Holds as many copies (dup) of the inherited fd argv[1] as the last number read from stdin.
DUP_HOLDER = """
import os, sys
fd = int(sys.argv[1])
copies = []
print("ready", flush=True)
for line in sys.stdin:
    wanted = int(line)
    while len(copies) < wanted:
        copies.append(os.dup(fd))
    while len(copies) > wanted:
        os.close(copies.pop())
    print("ok", flush=True)
"""


def _pairs(owners: dict[int, tuple[Owner, ...]]) -> Pairs:
    return {(prog_id, o.pid, o.via) for prog_id, os_ in owners.items() for o in os_}


def _spawn(args: list[str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, pass_fds=pass_fds
    )


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.stdin:
            p.stdin.close()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        if p.stdout:
            p.stdout.close()


def _check(it: OwnersIterator, ours: set[int]) -> None:
    for _attempt in range(5):
        before = _pairs(scan_owners())
        by_iter = it.owners()
        after = _pairs(scan_owners())
        got = _pairs(by_iter)
        # Processes under our control: exact.
        assert {p for p in got if p[1] in ours} == {p for p in before if p[1] in ours}
        # Everyone else: the pairs both scans agree on must be there, and the iterator may
        # only add pairs one of the scans saw (a process starting or ending meanwhile).
        stable = before & after
        if stable <= got and got - stable <= before | after:
            # comm and executable agree with /proc for this process
            with open("/proc/self/comm") as f:
                comm = f.read().strip()
            exe = os.path.basename(os.readlink("/proc/self/exe"))
            for owners in by_iter.values():
                for o in owners:
                    if o.pid == os.getpid():
                        assert (o.comm, o.executable) == (comm, exe)
            return
    pytest.fail(f"iterator and /proc scans kept disagreeing: {sorted(got ^ stable)[:10]}")


def test_owners_match_the_proc_scan_across_random_changes(
    children: list[subprocess.Popen[str]],
) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    with VmlinuxBtf() as btf:
        layout = OwnersLayout.from_btf(btf)
    mine: list[int] = []
    try:
        with OwnersIterator(layout) as it:
            ours = {os.getpid()}
            for round_no in range(4):
                for fd in rng.sample(mine, k=len(mine) // 2):
                    mine.remove(fd)
                    os.close(fd)
                mine.extend(load_named(f"otel_t_own{round_no}_{k}") for k in range(3))
                # A child holding some of our fds (like a forked worker), one with its own.
                shared = tuple(rng.sample(mine, k=2))
                holder = _spawn([sys.executable, "-c", "import sys; sys.stdin.read()"], shared)
                loader = _spawn([sys.executable, "-c", CHILD, str(rng.randint(1, 3))])
                children.extend([holder, loader])
                assert loader.stdout is not None
                child_ids = [int(x) for x in loader.stdout.readline().split()]
                ours |= {holder.pid, loader.pid}
                _check(it, ours)
                found = it.owners()
                # Any process enumerating programs (bpftool, a syscall-path pass) holds each
                # one's fd for a moment, so only our processes are compared exactly.
                for fd in shared:
                    assert holder.pid in {o.pid for o in found[prog_id_of_fd(fd)]}
                for prog_id in child_ids:
                    assert [o.pid for o in found[prog_id] if o.pid in ours] == [loader.pid]
                # the iterator's own link and program are reported too, as one owner
                mine_via = [o.via for o in found[it.prog_id] if o.pid == os.getpid()]
                assert mine_via == [("link", "prog")]
    finally:
        for fd in mine:
            os.close(fd)


def test_source_owners_come_from_the_iterator() -> None:
    fd = load_named("otel_t_src_own")
    try:
        with IteratorSource(SourceOptions(owners=True)) as source:
            records = {r.id: r for r in source.read().records}
            assert source.owners_path == "iterator"
            owners = records[prog_id_of_fd(fd)].owners
            assert owners is not None
            # (other processes may hold it for a moment while they enumerate programs)
            mine = [(o.pid, o.via) for o in owners if o.pid == os.getpid()]
            assert mine == [(os.getpid(), ("prog",))]
            without = source.read(SourceOptions(owners=False)).records
            assert all(r.owners is None for r in without)
    finally:
        os.close(fd)


def test_owners_fall_back_to_the_proc_scan(caplog: pytest.LogCaptureFixture) -> None:
    with VmlinuxBtf() as btf:
        tgid = btf.member_offset("task_struct", "tgid")
    fd = load_named("otel_t_own_fb")
    try:
        # A wrong tgid offset: calibration never recognises this process.
        with (
            caplog.at_level(logging.WARNING, logger="otel_bpf"),
            IteratorSource(
                SourceOptions(owners=True), owners_layout_overrides={"task_tgid": tgid + 4}
            ) as source,
        ):
            first = {r.id: r for r in source.read().records}
            second = {r.id: r for r in source.read().records}
            assert source.owners_path == "procfs"
        for records in (first, second):
            owners = records[prog_id_of_fd(fd)].owners
            assert owners is not None
            # (other processes may hold it for a moment while they enumerate programs)
            mine = [(o.pid, o.via) for o in owners if o.pid == os.getpid()]
            assert mine == [(os.getpid(), ("prog",))]
        lines = [r for r in caplog.records if "process owners" in r.getMessage()]
        assert len(lines) == 1
        assert "scanning /proc" in lines[0].getMessage()
    finally:
        os.close(fd)


def _one_pass_in_reads(link_fd: int) -> list[bytes]:
    """One pass of the iterator, as the chunks its read() calls returned."""
    fd = bpf(Cmd.ITER_CREATE, IterCreateAttr(link_fd, 0), "iterator")
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return chunks
    finally:
        os.close(fd)


@pytest.mark.parametrize("header_overflows", [False, True], ids=["entry", "header"])
def test_a_task_header_dropped_at_a_read_boundary_is_written_again(
    children: list[subprocess.Popen[str]], header_overflows: bool
) -> None:
    """The kernel drops the output of the fd that overflows a read()'s buffer and runs the
    program again for it on the next read(): the task header must come again too, or the
    fd would be given to the task before.  Copies of one of our program fds (dup), held by a
    process that the walk (by pid) meets first, move a child's header to just before the end
    of the first read's buffer."""
    seq_buffer = os.sysconf("SC_PAGE_SIZE") << 3  # bpf_seq_read's buffer: PAGE_SIZE << 3
    # Where the child's header starts: so that it fits but its fd's entry does not, or so
    # that the header itself does not.  (seq_write() wants room to spare: a record that
    # would end exactly at the end of the buffer overflows it.)
    if header_overflows:
        target = seq_buffer - TASK_HEADER.size
    else:
        target = seq_buffer - TASK_HEADER.size - PROG_ENTRY_SIZE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = seq_buffer // PROG_ENTRY_SIZE + 1024
    if hard < wanted:
        pytest.skip(f"needs RLIMIT_NOFILE >= {wanted} (hard limit {hard})")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))  # children inherit it
    with VmlinuxBtf() as btf:
        layout = OwnersLayout.from_btf(btf)
    prog = load_named("otel_t_edge")
    try:
        # The copies live in a holder spawned before the child rather than in this process,
        # whose pid may be above the child's once pids wrapped around.  If they wrap between
        # the two spawns, the next pair comes after the wrap, in order.
        for _attempt in range(3):
            holder = _spawn([sys.executable, "-c", DUP_HOLDER, str(prog)], (prog,))
            child = _spawn([sys.executable, "-c", READY_THEN_WAIT], (prog,))
            children.extend((holder, child))
            for p in (holder, child):
                assert p.stdout is not None and p.stdout.readline() == "ready\n"  # comm set
            if holder.pid < child.pid:
                break
        else:
            pytest.fail(
                f"no holder spawned before the child in pid order: {holder.pid}, {child.pid}"
            )

        def hold(count: int) -> None:
            assert holder.stdin is not None and holder.stdout is not None
            holder.stdin.write(f"{count}\n")
            holder.stdin.flush()
            assert holder.stdout.readline() == "ok\n"

        with open(f"/proc/{child.pid}/comm", "rb") as f:
            comm = f.read().rstrip(b"\n")
        header = TASK_HEADER.pack(MARK, KIND_TASK, comm.ljust(16, b"\0"), child.pid)
        with OwnersIterator(layout) as it:
            # Other processes' fds may change meanwhile: measure again until it lands.
            for _attempt in range(5):
                hold(0)
                at = it.read_raw().find(header)
                assert at >= 0
                if at > target:
                    pytest.skip(f"other processes' BPF fds fill the first {at} bytes")
                hold((target - at) // PROG_ENTRY_SIZE)
                chunks = _one_pass_in_reads(it.link_fd)
                if len(chunks[0]) == target:
                    break
            else:
                pytest.fail("the child's header never landed at the read boundary")
            data = b"".join(chunks)
            assert data.count(header) == 1 and chunks[1].startswith(header)
            owners, _ = owners_from_records(data)
            ours = {os.getpid(), child.pid}
            held = [(o.pid, o.via) for o in owners[prog_id_of_fd(prog)] if o.pid in ours]
            assert held == sorted([(os.getpid(), ("prog",)), (child.pid, ("prog",))])
    finally:
        os.close(prog)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
