"""The ``iter/cgroup`` path of the ``prog_attach`` source against its query walk, on the real
kernel: cgroup_skb programs attached with ``BPF_PROG_ATTACH`` with ``BPF_F_ALLOW_MULTI``,
with ``BPF_F_ALLOW_OVERRIDE`` and with no flag, a cgroup link beside them on the same
cgroup, container-like and nested cgroups, one program attached to two cgroups, and a
cgroup made after the first discovery.  Both paths must give the very same attachments,
and nothing once detached.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import replace

import pytest
from test_prog_attach_attachments import (
    DOCKER_CONTAINER,
    DOCKER_SCOPE,
    POD_CONTAINER,
    POD_SCOPE,
    POD_UID,
    PREFIX,
    RETURN_1,
    TEST_DIR_PREFIX,
    _remove_tree,
    prog_attach,
    prog_detach,
    sweep_stale,
)

from otel_bpf.demo import cgroup
from otel_bpf.kernel._uapi import BPF_F_ALLOW_MULTI, BPF_F_ALLOW_OVERRIDE, AttachType, ProgType
from otel_bpf.kernel.attach import Names, read_link_attachments
from otel_bpf.kernel.attach_discovery import DiscoveryContext
from otel_bpf.kernel.attach_query import ProgAttachSource
from otel_bpf.kernel.fd import KernelFd
from otel_bpf.kernel.iterator.cgroups import PROGRAM_NAME, CgroupIterator
from otel_bpf.kernel.iterator.source import IteratorSource
from otel_bpf.kernel.links import create_owned_link
from otel_bpf.kernel.loader import load_owned_program, program_id
from otel_bpf.kernel.programs import SyscallSource
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.records import Attachment

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

EGRESS = AttachType.CGROUP_INET_EGRESS
INGRESS = AttachType.CGROUP_INET_INGRESS


@pytest.fixture
def top() -> Iterator[str]:
    mount = cgroup.cgroup2_mount()
    sweep_stale(mount)
    path = os.path.join(mount, f"{TEST_DIR_PREFIX}{os.getpid()}")
    try:
        os.makedirs(os.path.join(path, POD_SCOPE))
        os.makedirs(os.path.join(path, DOCKER_SCOPE))
        os.makedirs(os.path.join(path, "plain"))
        yield path
    finally:
        _remove_tree(path)
        assert not os.path.exists(path), f"{path} remains"


def both_ways(
    iterated: ProgAttachSource, programs: dict[int, str]
) -> tuple[dict[int, list[Attachment]], dict[int, list[Attachment]]]:
    """What the iterator path and the query walk report for ``programs``, each program's
    attachments sorted (the two walk the cgroups in different orders)."""
    names = Names()
    found = read_link_attachments(names)
    queried = ProgAttachSource(iterator=False)
    answers = []
    for source in (iterated, queried):
        ctx = DiscoveryContext(names, programs, {p: list(a) for p, a in found.items()})
        answer = source.read(ctx)
        assert ctx.errors == []
        answers.append({p: sorted(a, key=repr) for p, a in answer.items() if p in programs})
    assert iterated.iterated and not queried.iterated
    return answers[0], answers[1]


@pytest.mark.parametrize("loops", ["bpf_iter_num", "bounded"])
def test_iterator_reports_what_the_query_walk_does(top: str, loops: str) -> None:
    pod = os.path.join(top, POD_SCOPE)
    docker = os.path.join(top, DOCKER_SCOPE)
    plain = os.path.join(top, "plain")
    nested = os.path.join(plain, "child", "grandchild")
    iterated = ProgAttachSource()
    with ExitStack() as stack:
        stack.callback(iterated.close)
        # Both forms of the program's loops: the bounded ones are what kernels before 6.4
        # (no bpf_iter_num) load.
        it = CgroupIterator.open(Names().cgroup_root, bounded_loops=loops == "bounded")
        assert it.verified_insns < 300_000  # the verifier's limit is 1,000,000
        if loops == "bpf_iter_num":
            assert it.verified_insns < 2_000
        iterated._iterator = it

        def load(name: str, at: int) -> KernelFd:
            return stack.enter_context(
                load_owned_program(
                    ProgType.CGROUP_SKB, RETURN_1, f"{PREFIX}{name}", expected_attach_type=at
                )
            )

        def open_dir(path: str) -> int:
            fd = cgroup.open_dir(path)
            stack.callback(os.close, fd)
            return fd

        multi, linked, override, none, two = (
            load("multi", EGRESS),
            load("linked", EGRESS),
            load("over", INGRESS),
            load("none", INGRESS),
            load("two", EGRESS),
        )
        programs = {program_id(p): "cgroup_skb" for p in (multi, linked, override, none, two)}
        pod_fd, docker_fd, plain_fd = open_dir(pod), open_dir(docker), open_dir(plain)
        prog_attach(pod_fd, multi, EGRESS, BPF_F_ALLOW_MULTI)
        # A link beside it on the same hook, and the same program by PROG_ATTACH too.
        link = stack.enter_context(create_owned_link(linked, pod_fd, EGRESS))
        prog_attach(pod_fd, linked, EGRESS, BPF_F_ALLOW_MULTI)
        prog_attach(pod_fd, two, EGRESS, BPF_F_ALLOW_MULTI)
        prog_attach(docker_fd, override, INGRESS, BPF_F_ALLOW_OVERRIDE)
        prog_attach(plain_fd, none, INGRESS)
        prog_attach(docker_fd, two, EGRESS, BPF_F_ALLOW_MULTI)

        fast, slow = both_ways(iterated, programs)
        assert fast == slow
        pod_fields = {
            "cgroup_id": os.stat(pod).st_ino,
            "cgroup_path": pod,
            "container_id": POD_CONTAINER,
            "pod_uid": POD_UID,
            "qos_class": "besteffort",
        }
        docker_fields = {
            "cgroup_id": os.stat(docker).st_ino,
            "cgroup_path": docker,
            "container_id": DOCKER_CONTAINER,
        }
        assert fast[program_id(multi)] == [
            Attachment(
                "cgroup",
                "prog_attach",
                None,
                "cgroup_inet_egress",
                pod,
                attach_flags="multi",
                **pod_fields,
            )  # fmt: skip
        ]
        assert fast[program_id(linked)] == fast[program_id(multi)]  # the link is not here
        assert link.id is not None
        assert fast[program_id(two)] == sorted(
            [
                fast[program_id(multi)][0],
                Attachment(
                    "cgroup", "prog_attach", None, "cgroup_inet_egress", docker,
                    attach_flags="multi", **docker_fields,
                ),
            ],
            key=repr,
        )  # fmt: skip
        assert fast[program_id(override)] == [
            Attachment(
                "cgroup",
                "prog_attach",
                None,
                "cgroup_inet_ingress",
                docker,
                attach_flags="override",
                **docker_fields,
            )  # fmt: skip
        ]
        assert fast[program_id(none)] == [
            Attachment(
                "cgroup",
                "prog_attach",
                None,
                "cgroup_inet_ingress",
                plain,
                cgroup_id=os.stat(plain).st_ino,
                cgroup_path=plain,
            )  # fmt: skip
        ]

        # A nested cgroup made since the last discovery gets its path too (at egress: its
        # parent took ingress with no flag, which keeps its descendants from it).
        os.makedirs(nested)
        nested_fd = open_dir(nested)
        prog_attach(nested_fd, two, EGRESS, BPF_F_ALLOW_MULTI)
        fast, slow = both_ways(iterated, programs)
        assert fast == slow
        assert any(a.cgroup_path == nested for a in fast[program_id(two)])

        # The iterator program is the source's own.
        assert len(iterated.own_programs()) == 1

        prog_detach(pod_fd, multi, EGRESS)
        prog_detach(pod_fd, linked, EGRESS)
        prog_detach(pod_fd, two, EGRESS)
        prog_detach(docker_fd, override, INGRESS)
        prog_detach(plain_fd, none, INGRESS)
        prog_detach(docker_fd, two, EGRESS)
        prog_detach(nested_fd, two, EGRESS)
        fast, slow = both_ways(iterated, programs)
        assert fast == slow == {}
    assert iterated.own_programs() == ()


@pytest.mark.parametrize("path", ["syscall", "iterator"])
def test_the_sources_own_iterator_is_not_reported_as_a_host_program(path: str, top: str) -> None:
    opened = SyscallSource() if path == "syscall" else IteratorSource()
    options = SourceOptions(attachments=True, memlock=False)
    with ExitStack() as stack:
        source = stack.enter_context(opened)
        prog = stack.enter_context(
            load_owned_program(
                ProgType.CGROUP_SKB, RETURN_1, f"{PREFIX}own", expected_attach_type=EGRESS
            )
        )
        plain = os.path.join(top, "plain")
        fd = cgroup.open_dir(plain)
        stack.callback(os.close, fd)
        prog_attach(fd, prog, EGRESS, BPF_F_ALLOW_MULTI)
        stack.callback(prog_detach, fd, prog, EGRESS)
        # The first pass lists the programs before its discovery loads the cgroup iterator
        # (another test's, if any, is listed as any program); the second would list it.
        first = source.read(options).records
        others = {r.id for r in first if r.name == PROGRAM_NAME}
        second = source.read(options).records
        assert {r.id for r in second if r.name == PROGRAM_NAME} == others
        mine = next(r for r in second if r.id == program_id(prog))
        assert mine.attachments is not None
        assert [(a.via, a.cgroup_path) for a in mine.attachments] == [("prog_attach", plain)]
        everything = source.read(replace(options, include_self=True)).records
        assert len({r.id for r in everything if r.name == PROGRAM_NAME} - others) == 1


def test_a_pass_too_big_for_one_read_is_made_by_the_query_walk(top: str) -> None:
    # 17 cgroups with 64 programs at each of ingress and egress: 2,176 records, more than
    # the 32 KiB one read of the cgroup iterator holds (it cannot resume once the cgroup
    # mutex was dropped, and says EOPNOTSUPP).
    iterated = ProgAttachSource()
    with ExitStack() as stack:
        stack.callback(iterated.close)
        progs = {
            at: [
                stack.enter_context(
                    load_owned_program(
                        ProgType.CGROUP_SKB, RETURN_1, f"{PREFIX}b{at}_{i}", expected_attach_type=at
                    )
                )
                for i in range(64)
            ]
            for at in (INGRESS, EGRESS)
        }
        programs = {program_id(p): "cgroup_skb" for ps in progs.values() for p in ps}
        for n in range(17):
            path = os.path.join(top, "plain", f"c{n}")
            os.mkdir(path)
            fd = cgroup.open_dir(path)
            stack.callback(os.close, fd)
            for at, ps in progs.items():
                for p in ps:
                    prog_attach(fd, p, at, BPF_F_ALLOW_MULTI)
        names = Names()
        found = read_link_attachments(names)
        ctx = DiscoveryContext(names, programs, {p: list(a) for p, a in found.items()})
        answer = iterated.read(ctx)
        assert not iterated.iterated
        assert len(iterated.own_programs()) == 1  # loaded, kept for the next discovery
        assert sum(len(answer[p]) for p in programs) == 17 * 128
        queried = ProgAttachSource(iterator=False).read(ctx)
        assert {p: answer[p] for p in programs} == {p: queried[p] for p in programs}
