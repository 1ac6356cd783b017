"""Owner lookup through /proc: program fds, link fds, and programs nobody holds."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from kernel_progs import counting_filter, holding_child, load_named, prog_id_of_fd

from otel_bpf.kernel.owners import process_comm, scan_owners
from otel_bpf.kernel.programs import read_all
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.records import ProgramRecord

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]


# Loads an XDP program in a fresh network namespace, links it to that namespace's loopback,
# closes the program fd and keeps only the link fd until stdin closes.
LINK_HOLDER = """
import os, sys
from otel_bpf.demo import netns
from otel_bpf.kernel import asm, links
from otel_bpf.kernel._uapi import AttachType, ProgType
from otel_bpf.kernel.fdinfo import parse_fdinfo
from otel_bpf.kernel.loader import load_program
netns.unshare_net()
prog = asm.assemble([asm.mov64_imm(asm.R0, 2), asm.exit_()])
fd = load_program(ProgType.XDP, prog, "otel_t_linked", expected_attach_type=AttachType.XDP)
link = links.link_create(fd, 1, AttachType.XDP)  # ifindex 1: lo of the new namespace
os.close(fd)
with open(f"/proc/self/fdinfo/{link}") as f:
    print(parse_fdinfo(f.read())["prog_id"], flush=True)
sys.stdin.read()
"""


def record(prog_id: int, **kw: bool) -> ProgramRecord:
    result = read_all(SourceOptions(**kw))
    assert result.errors == []
    return next(r for r in result.records if r.id == prog_id)


def test_the_test_process_owns_its_program_via_prog() -> None:
    fd = load_named("otel_t_owned")
    try:
        rec = record(prog_id_of_fd(fd), owners=True)
        assert rec.owners is not None
        mine = [o for o in rec.owners if o.pid == os.getpid()]
        assert len(mine) == 1
        (owner,) = mine
        assert owner.via == ("prog",)
        assert owner.comm == process_comm(os.getpid()) != ""
        assert owner.executable == os.path.basename(os.path.realpath(sys.executable))
    finally:
        os.close(fd)


def test_child_holding_only_a_link_fd_owns_via_link() -> None:
    with holding_child(LINK_HOLDER) as child:
        prog_id = child.prog_id
        rec = record(prog_id, owners=True)
        assert rec.name == "otel_t_linked" and rec.type == "xdp"
        assert rec.owners is not None
        assert [(o.pid, o.via) for o in rec.owners] == [(child.pid, ("link",))]
        assert rec.owners[0].executable == os.path.basename(os.path.realpath(sys.executable))
        child.release()
        # The link went with the process, and the program with the link.
        deadline = time.monotonic() + 10
        while prog_id in scan_owners() or any(r.id == prog_id for r in read_all().records):
            assert time.monotonic() < deadline, "program outlived its only link"
            time.sleep(0.05)


def test_program_held_by_no_process_has_no_owner() -> None:
    with counting_filter() as filt:
        # The socket keeps the attached program loaded; no process holds a BPF fd for it.
        os.close(filt.prog_fd)
        filt.prog_fd = os.open("/dev/null", os.O_RDONLY)  # closed by counting_filter
        rec = record(filt.prog_id, owners=True)
        assert rec.owners == ()
        assert record(filt.prog_id).owners is None


def test_scan_tolerates_exiting_processes() -> None:
    procs = [subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(4)]
    try:
        for _ in range(5):
            owners = scan_owners()
            assert all(isinstance(k, int) and v for k, v in owners.items())
    finally:
        for p in procs:
            p.wait(30)
