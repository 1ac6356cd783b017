"""Attachments read back from real BPF links: xdp and tcx on lo, cgroup_skb on a fresh cgroup,
a raw tracepoint; checked field by field and against ``bpftool link show``.

Tracing links (fentry) are decoded from hand-built info in tests/unit/test_link_attach.py
only: the test machines' kernels have no ftrace, and refuse fentry programs (EPERM)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from kernel_progs import bpftool_json

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import AttachType, Cmd, ProgType, RawTracepointOpenAttr
from otel_bpf.kernel.attach import CGROUP_GONE, Names, cgroup2_root, read_link_attachments
from otel_bpf.kernel.attach_discovery import AttachmentDiscovery
from otel_bpf.kernel.fd import KernelFd
from otel_bpf.kernel.links import create_owned_link, link_id
from otel_bpf.kernel.loader import load_owned_program, program_id
from otel_bpf.kernel.programs import SyscallSource
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.kernel.syscall import bpf
from otel_bpf.records import Attachment

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

PREFIX = f"otel_lk{os.getpid() % 10000}_"
RETURN_0 = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])
RETURN_1 = asm.assemble([asm.mov64_imm(asm.R0, 1), asm.exit_()])
XDP_PASS = asm.assemble([asm.mov64_imm(asm.R0, 2), asm.exit_()])
XDP_FLAGS_SKB_MODE = 1 << 1


def raw_tracepoint_open(prog: KernelFd, name: str) -> KernelFd:
    tp = ctypes.create_string_buffer(name.encode())
    attr = RawTracepointOpenAttr(name=ctypes.addressof(tp), prog_fd=prog.fileno())
    return KernelFd.adopt(bpf(Cmd.RAW_TRACEPOINT_OPEN, attr, name), "link", link_id)


@pytest.fixture
def cgroup() -> Iterator[str]:
    path = os.path.join(cgroup2_root(), f"{PREFIX}cg")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


def only(found: dict[int, list[Attachment]], prog: KernelFd) -> Attachment:
    (attachment,) = found[program_id(prog)]
    return attachment


def test_links_read_back(cgroup: str) -> None:
    with ExitStack() as stack:
        xdp = stack.enter_context(
            load_owned_program(
                ProgType.XDP, XDP_PASS, f"{PREFIX}xdp", expected_attach_type=AttachType.XDP
            )
        )
        xdp_link = stack.enter_context(
            create_owned_link(xdp, 1, AttachType.XDP, XDP_FLAGS_SKB_MODE)
        )
        tcx = stack.enter_context(load_owned_program(ProgType.SCHED_CLS, RETURN_0, f"{PREFIX}tcx"))
        tcx_link = stack.enter_context(create_owned_link(tcx, 1, AttachType.TCX_INGRESS))
        skb = stack.enter_context(
            load_owned_program(
                ProgType.CGROUP_SKB,
                RETURN_1,
                f"{PREFIX}skb",
                expected_attach_type=AttachType.CGROUP_INET_EGRESS,
            )
        )
        cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            cg_link = stack.enter_context(
                create_owned_link(skb, cg_fd, AttachType.CGROUP_INET_EGRESS)
            )
        finally:
            os.close(cg_fd)
        raw = stack.enter_context(
            load_owned_program(ProgType.RAW_TRACEPOINT, RETURN_0, f"{PREFIX}raw")
        )
        raw_link = stack.enter_context(raw_tracepoint_open(raw, "sys_enter"))
        errors: list[str] = []
        found = read_link_attachments(errors=errors)
        assert errors == []

        own_netns = os.stat("/proc/self/ns/net").st_ino
        assert only(found, xdp) == Attachment(
            "xdp", "link", xdp_link.id, "xdp", "lo", ifindex=1, ifname="lo", netns=own_netns
        )
        assert only(found, tcx) == Attachment(
            "tcx", "link", tcx_link.id, "tcx_ingress", "lo", ifindex=1, ifname="lo",
            netns=own_netns, direction="ingress",
        )  # fmt: skip
        cgroup_id = os.stat(cgroup).st_ino
        assert only(found, skb) == Attachment(
            "cgroup", "link", cg_link.id, "cgroup_inet_egress", cgroup,
            cgroup_id=cgroup_id, cgroup_path=cgroup,
        )  # fmt: skip
        assert only(found, raw) == Attachment(
            "raw_tracepoint", "link", raw_link.id, "trace_raw_tp", "sys_enter"
        )
        # bpftool agrees on which link holds which program.
        ours = {program_id(p) for p in (xdp, tcx, skb, raw)}
        shown = bpftool_json("link", "show")
        assert isinstance(shown, list)
        by_bpftool = {(e["id"], e["prog_id"]) for e in shown if e["prog_id"] in ours}
        by_us = {(a.link_id, p) for p in ours for a in found[p]}
        assert by_us == by_bpftool
        assert {e["id"] for e in shown if e.get("type") == "cgroup" and e["prog_id"] in ours} == {
            cg_link.id
        }
        # The source decorates records with them, and () for a program attached nowhere.
        lonely = stack.enter_context(
            load_owned_program(ProgType.SOCKET_FILTER, RETURN_0, f"{PREFIX}none")
        )
        with SyscallSource(SourceOptions(attachments=True, memlock=False)) as source:
            records = {r.id: r for r in source.read().records}
        assert records[program_id(lonely)].attachments == ()
        assert records[program_id(xdp)].attachments == (only(found, xdp),)

    # Every link is closed: the programs are gone with them.
    assert not any(p in ours for p in read_link_attachments())


def test_cache_walks_again_when_a_link_goes() -> None:
    cache = AttachmentDiscovery(3600.0, names=Names())
    with load_owned_program(ProgType.RAW_TRACEPOINT, RETURN_0, f"{PREFIX}raw2") as prog:
        pid = program_id(prog)
        with raw_tracepoint_open(prog, "sys_exit") as link:
            first = cache.get({pid: "raw_tracepoint"})
            assert [a.link_id for a in first[pid]] == [link.id]
        # Same programs, within the interval: the last walk's result, link and all.
        assert cache.get({pid: "raw_tracepoint"}) is first
        assert cache.walks == 1
    assert pid not in cache.get({})  # the program set changed: walked again
    assert cache.walks == 2
    cache.close()


SK_LOOKUP_PROG_TYPE = 30  # BPF_PROG_TYPE_SK_LOOKUP
SK_LOOKUP_ATTACH_TYPE = 36  # BPF_SK_LOOKUP
# SK_PASS without selecting a socket: the kernel's own lookup goes on as if nothing ran.
SK_PASS = RETURN_1


def test_iter_and_netns_links_read_back() -> None:
    from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf

    with VmlinuxBtf() as vmlinux:
        target = vmlinux.func_id("bpf_iter_bpf_prog")
    with ExitStack() as stack:
        it = stack.enter_context(
            load_owned_program(
                ProgType.TRACING,
                RETURN_0,
                f"{PREFIX}it",
                expected_attach_type=AttachType.TRACE_ITER,
                attach_btf_id=target,
            )
        )
        it_link = stack.enter_context(create_owned_link(it, 0, AttachType.TRACE_ITER))
        lookup = stack.enter_context(
            load_owned_program(
                SK_LOOKUP_PROG_TYPE,
                SK_PASS,
                f"{PREFIX}skl",
                expected_attach_type=SK_LOOKUP_ATTACH_TYPE,
            )
        )
        netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            ns_link = stack.enter_context(
                create_owned_link(lookup, netns_fd, SK_LOOKUP_ATTACH_TYPE)
            )
        finally:
            os.close(netns_fd)
        errors: list[str] = []
        found = read_link_attachments(errors=errors)
        assert errors == []
        assert only(found, it) == Attachment("iter", "link", it_link.id, "trace_iter", "bpf_prog")
        ino = os.stat("/proc/self/ns/net").st_ino
        assert only(found, lookup) == Attachment(
            "netns", "link", ns_link.id, "sk_lookup", f"net:[{ino}]", netns=ino
        )


NETFILTER_PROG_TYPE = 32  # BPF_PROG_TYPE_NETFILTER
NETFILTER_ATTACH_TYPE = 45  # BPF_NETFILTER
NF_ACCEPT = RETURN_1


def test_netfilter_link_reads_back() -> None:
    import struct

    from otel_bpf.kernel._uapi import LinkCreateAttr

    with load_owned_program(
        NETFILTER_PROG_TYPE, NF_ACCEPT, f"{PREFIX}nf", expected_attach_type=NETFILTER_ATTACH_TYPE
    ) as prog:
        attr = LinkCreateAttr(prog_fd=prog.fileno(), attach_type=NETFILTER_ATTACH_TYPE)
        # link_create.netfilter: pf NFPROTO_IPV4, hooknum NF_INET_LOCAL_IN, priority, flags.
        hook = struct.pack("<IIiI", 2, 1, -128, 0)
        ctypes.memmove(ctypes.addressof(attr) + LinkCreateAttr._tail.offset, hook, len(hook))
        fd = bpf(Cmd.LINK_CREATE, attr, "netfilter link")
        with KernelFd.adopt(fd, "link", link_id) as link:
            found = read_link_attachments()
            assert only(found, prog) == Attachment(
                "netfilter", "link", link.id, "netfilter", "ipv4 input", priority=-128
            )


def test_a_cgroup_made_after_the_scan_is_named_at_once(cgroup: str) -> None:
    # A new container's cgroup is opened by its id (a file handle), not found by rescanning
    # the hierarchy, which happens at most once a second; a removed one is told apart.
    names = Names()
    try:
        assert names.cgroup_path(os.stat(cgroup).st_ino) == cgroup  # the first look-up
        fresh = os.path.join(cgroup, "fresh")
        os.mkdir(fresh)
        try:
            assert names.cgroup_path(os.stat(fresh).st_ino) == fresh
            gone = os.path.join(cgroup, "gone")
            os.mkdir(gone)
            gone_id = os.stat(gone).st_ino
            os.rmdir(gone)
            assert names.cgroup_by_id(gone_id) is CGROUP_GONE
            assert names.cgroup_path(gone_id) is None
        finally:
            os.rmdir(fresh)
    finally:
        names.close()
