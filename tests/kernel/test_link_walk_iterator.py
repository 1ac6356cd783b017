"""The link walk through ``iter/bpf_link`` (``LinkWalk``) gives what the syscall walk gives,
on a mix of link types (xdp and tcx on lo, cgroup_skb, raw tracepoint, iter, sk_lookup,
netfilter), and again after links change under it: a program replaced
(``BPF_LINK_UPDATE``), xdp, tcx, cgroup and netns links detached (``BPF_LINK_DETACH``), a
link closed, a link added."""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace

import pytest
from test_link_attachments import (
    NETFILTER_ATTACH_TYPE,
    NETFILTER_PROG_TYPE,
    PREFIX,
    RETURN_0,
    RETURN_1,
    SK_LOOKUP_ATTACH_TYPE,
    SK_LOOKUP_PROG_TYPE,
    XDP_FLAGS_SKB_MODE,
    XDP_PASS,
    raw_tracepoint_open,
)

from otel_bpf.kernel._uapi import AttachType, Cmd, LinkCreateAttr, ProgType, u32
from otel_bpf.kernel.attach import LinkWalk, Names, cgroup2_root, read_link_attachments
from otel_bpf.kernel.fd import KernelFd
from otel_bpf.kernel.links import create_owned_link, link_id
from otel_bpf.kernel.loader import load_owned_program, program_id
from otel_bpf.kernel.syscall import bpf
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf
from otel_bpf.records import Attachment

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]


class LinkUpdateAttr(ctypes.Structure):
    _fields_ = [("link_fd", u32), ("new_prog_fd", u32), ("flags", u32), ("old_prog_fd", u32)]


class LinkDetachAttr(ctypes.Structure):
    _fields_ = [("link_fd", u32)]


@pytest.fixture
def cgroup() -> Iterator[str]:
    path = os.path.join(cgroup2_root(), f"{PREFIX}walk")
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


def same_as_syscall_walk(walk: LinkWalk, names: Names) -> dict[int, list[Attachment]]:
    errors: list[str] = []
    fast = walk.read(names, errors)
    assert walk.fast
    assert errors == []
    assert fast == read_link_attachments(names)
    return fast


def test_iterator_walk_equals_syscall_walk(cgroup: str) -> None:
    with VmlinuxBtf() as vmlinux:
        iter_target = vmlinux.func_id("bpf_iter_bpf_prog")
    names = Names()
    with ExitStack() as stack:
        stack.callback(names.close)
        walk = stack.enter_context(LinkWalk())

        def load(prog_type: int, insns: bytes, tag: str, attach_type: int = 0) -> KernelFd:
            return stack.enter_context(
                load_owned_program(
                    prog_type, insns, f"{PREFIX}{tag}", expected_attach_type=attach_type
                )
            )

        xdp = load(ProgType.XDP, XDP_PASS, "wxdp", AttachType.XDP)
        xdp_link = stack.enter_context(
            create_owned_link(xdp, 1, AttachType.XDP, XDP_FLAGS_SKB_MODE)
        )
        tcx = load(ProgType.SCHED_CLS, RETURN_0, "wtcx")
        tcx_link = stack.enter_context(create_owned_link(tcx, 1, AttachType.TCX_EGRESS))
        skb = load(ProgType.CGROUP_SKB, RETURN_1, "wskb", AttachType.CGROUP_INET_INGRESS)
        skb2 = load(ProgType.CGROUP_SKB, RETURN_1, "wskb2", AttachType.CGROUP_INET_INGRESS)
        cg_fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
        try:
            cg_link = stack.enter_context(
                create_owned_link(skb, cg_fd, AttachType.CGROUP_INET_INGRESS)
            )
        finally:
            os.close(cg_fd)
        raw = load(ProgType.RAW_TRACEPOINT, RETURN_0, "wraw")
        raw_link = stack.enter_context(raw_tracepoint_open(raw, "sys_enter"))
        it = stack.enter_context(
            load_owned_program(
                ProgType.TRACING,
                RETURN_0,
                f"{PREFIX}wit",
                expected_attach_type=AttachType.TRACE_ITER,
                attach_btf_id=iter_target,
            )
        )
        stack.enter_context(create_owned_link(it, 0, AttachType.TRACE_ITER))
        lookup = load(SK_LOOKUP_PROG_TYPE, RETURN_1, "wskl", SK_LOOKUP_ATTACH_TYPE)
        netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            ns_link = stack.enter_context(
                create_owned_link(lookup, netns_fd, SK_LOOKUP_ATTACH_TYPE)
            )
        finally:
            os.close(netns_fd)
        nf = load(NETFILTER_PROG_TYPE, RETURN_1, "wnf", NETFILTER_ATTACH_TYPE)
        attr = LinkCreateAttr(prog_fd=nf.fileno(), attach_type=NETFILTER_ATTACH_TYPE)
        hook = struct.pack("<IIiI", 2, 1, -128, 0)  # ipv4, local in, priority, flags
        ctypes.memmove(ctypes.addressof(attr) + LinkCreateAttr._tail.offset, hook, len(hook))
        stack.enter_context(KernelFd.adopt(bpf(Cmd.LINK_CREATE, attr, "nf"), "link", link_id))

        first = same_as_syscall_walk(walk, names)
        ours = [xdp, tcx, skb, raw, it, lookup, nf]
        assert all(len(first[program_id(p)]) == 1 for p in ours)
        assert walk.fetched >= len(ours)
        # Nothing changed: no link of ours is asked about again.
        same_as_syscall_walk(walk, names)
        assert walk.fetched < len(ours)

        # A program replaced in its cgroup link.
        bpf(Cmd.LINK_UPDATE, LinkUpdateAttr(cg_link.fileno(), skb2.fileno()), "update")
        found = same_as_syscall_walk(walk, names)
        assert program_id(skb) not in found
        assert [a.link_id for a in found[program_id(skb2)]] == [cg_link.id]

        # Detached: the links stay (their fds are open) but name no target.
        for link in (xdp_link, tcx_link, cg_link, ns_link):
            bpf(Cmd.LINK_DETACH, LinkDetachAttr(link.fileno()), "detach")
        found = same_as_syscall_walk(walk, names)
        assert found[program_id(xdp)][0].target == "detached"
        assert found[program_id(tcx)][0].target == "detached"
        assert found[program_id(skb2)][0].cgroup_id == 0
        assert found[program_id(lookup)][0].netns == 0

        # A link closed, one added.
        raw_link.close()
        found = same_as_syscall_walk(walk, names)
        assert program_id(raw) not in found
        again = stack.enter_context(raw_tracepoint_open(raw, "sys_exit"))
        found = same_as_syscall_walk(walk, names)
        assert [(a.link_id, a.target) for a in found[program_id(raw)]] == [(again.id, "sys_exit")]


def test_the_walks_own_iterator_is_not_reported() -> None:
    from otel_bpf.kernel.iterator.links import PROGRAM_NAME
    from otel_bpf.kernel.programs import SyscallSource
    from otel_bpf.kernel.source import SourceOptions

    options = SourceOptions(attachments=True, memlock=False)
    with SyscallSource(options) as source:
        for _ in range(2):  # the first read loads the link iterator
            names = [r.name for r in source.read().records]
            assert PROGRAM_NAME not in names
        shown = source.read(replace(options, include_self=True)).records
        assert PROGRAM_NAME in [r.name for r in shown]
