"""Attach points made without a link, read back from the real kernel: cgroup_skb programs
attached with ``BPF_PROG_ATTACH`` (``BPF_F_ALLOW_MULTI``) to cgroups named like a Kubernetes
pod's container and a Docker container, beside a cgroup link; a flow_dissector program on a
child's network namespace; sk_skb and sk_msg programs on sockmaps; a uprobe perf event with
a program set by ``PERF_EVENT_IOC_SET_BPF``.  Each is reported exactly once with the right
``via``, and nothing is reported for it once detached.

sk_lookup programs cannot be attached with ``BPF_PROG_ATTACH`` (the kernel answers EINVAL:
checked below); a network namespace's ``BPF_PROG_ATTACH`` is shown with flow_dissector.
kprobes and tracepoints cannot be created on the test machines (no kprobes, no tracefs): the
perf-event source is tested for real on a uprobe, and its decoding of kprobe and tracepoint
answers on constructed ``BPF_TASK_FD_QUERY`` results in tests/unit/test_attach_query.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import glob
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from kernel_progs import TREE

from otel_bpf.demo import cgroup
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import (
    ATTACH_TYPE_NAMES,
    BPF_F_ALLOW_MULTI,
    AttachType,
    Cmd,
    MapType,
    ProgAttachAttr,
    ProgType,
)
from otel_bpf.kernel.attach import Names
from otel_bpf.kernel.attach_discovery import AttachmentDiscovery, DiscoveryContext
from otel_bpf.kernel.attach_query import PerfEventSource, task_fd_query
from otel_bpf.kernel.errors import BpfError
from otel_bpf.kernel.fd import KernelFd
from otel_bpf.kernel.links import create_owned_link
from otel_bpf.kernel.loader import load_owned_program, program_id
from otel_bpf.kernel.maps import create_owned_map
from otel_bpf.kernel.syscall import bpf, libc
from otel_bpf.records import Attachment

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(60)]

PREFIX = f"otel_pa{os.getpid() % 10000}_"
TEST_DIR_PREFIX = "otel-bpf-pa-"
RETURN_0 = asm.assemble([asm.mov64_imm(asm.R0, 0), asm.exit_()])
RETURN_1 = asm.assemble([asm.mov64_imm(asm.R0, 1), asm.exit_()])

POD_UID = "0c1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5"
POD_CONTAINER = "c0ffee" + "0123456789abcdef" * 3 + "0a1b2c3d4e"
DOCKER_CONTAINER = "d0c4e2" + "fedcba9876543210" * 3 + "5f6e7d8c9b"
POD_SCOPE = (
    "kubepods.slice/kubepods-besteffort.slice/"
    f"kubepods-besteffort-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{POD_CONTAINER}.scope"
)
DOCKER_SCOPE = f"system.slice/docker-{DOCKER_CONTAINER}.scope"


def attach_type(name: str) -> int:
    return ATTACH_TYPE_NAMES.index(name)


def prog_attach(target_fd: int, prog: KernelFd, at: int, flags: int = 0) -> None:
    attr = ProgAttachAttr(
        target_fd=target_fd, attach_bpf_fd=prog.fileno(), attach_type=at, attach_flags=flags
    )
    bpf(Cmd.PROG_ATTACH, attr, "attach")


def prog_detach(target_fd: int, prog: KernelFd, at: int) -> None:
    attr = ProgAttachAttr(target_fd=target_fd, attach_bpf_fd=prog.fileno(), attach_type=at)
    bpf(Cmd.PROG_DETACH, attr, "detach")


def _remove_tree(top: str) -> None:
    for path, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path)


def sweep_stale(mount: str) -> None:
    """Test directories left by a run that was killed (its pid no longer alive)."""
    for top in glob.glob(os.path.join(mount, f"{TEST_DIR_PREFIX}*")):
        pid = os.path.basename(top)[len(TEST_DIR_PREFIX) :]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                _remove_tree(top)


@dataclass
class Cgroups:
    pod: str
    docker: str


@pytest.fixture
def cgroups() -> Iterator[Cgroups]:
    mount = cgroup.cgroup2_mount()
    sweep_stale(mount)
    top = os.path.join(mount, f"{TEST_DIR_PREFIX}{os.getpid()}")
    try:
        pod = os.path.join(top, POD_SCOPE)
        docker = os.path.join(top, DOCKER_SCOPE)
        os.makedirs(pod)
        os.makedirs(docker)
        yield Cgroups(pod, docker)
    finally:
        _remove_tree(top)
        assert not os.path.exists(top), f"{top} remains"


def discover(programs: dict[int, str]) -> dict[int, tuple[Attachment, ...]]:
    discovery = AttachmentDiscovery(names=Names())
    errors: list[str] = []
    try:
        found = discovery.get(programs, errors)
    finally:
        discovery.close()
    assert errors == []
    return found


def test_cgroup_prog_attach_beside_a_link(cgroups: Cgroups) -> None:
    egress = AttachType.CGROUP_INET_EGRESS
    ingress = AttachType.CGROUP_INET_INGRESS
    with ExitStack() as stack:
        both = stack.enter_context(
            load_owned_program(
                ProgType.CGROUP_SKB, RETURN_1, f"{PREFIX}both", expected_attach_type=egress
            )
        )
        docker_prog = stack.enter_context(
            load_owned_program(
                ProgType.CGROUP_SKB, RETURN_1, f"{PREFIX}dock", expected_attach_type=ingress
            )
        )
        pod_fd = cgroup.open_dir(cgroups.pod)
        stack.callback(os.close, pod_fd)
        docker_fd = cgroup.open_dir(cgroups.docker)
        stack.callback(os.close, docker_fd)
        # The same program attached to one cgroup both ways: by PROG_ATTACH and by a link.
        prog_attach(pod_fd, both, egress, BPF_F_ALLOW_MULTI)
        link = create_owned_link(both, pod_fd, egress)
        prog_attach(docker_fd, docker_prog, ingress, BPF_F_ALLOW_MULTI)
        programs = {program_id(both): "cgroup_skb", program_id(docker_prog): "cgroup_skb"}

        pod_fields = {
            "cgroup_id": os.stat(cgroups.pod).st_ino,
            "cgroup_path": cgroups.pod,
            "container_id": POD_CONTAINER,
            "pod_uid": POD_UID,
            "qos_class": "besteffort",
        }
        by_link = Attachment(
            "cgroup", "link", link.id, "cgroup_inet_egress", cgroups.pod, **pod_fields
        )
        by_attach = Attachment(
            "cgroup", "prog_attach", None, "cgroup_inet_egress", cgroups.pod,
            attach_flags="multi", **pod_fields,
        )  # fmt: skip
        in_docker = Attachment(
            "cgroup", "prog_attach", None, "cgroup_inet_ingress", cgroups.docker,
            cgroup_id=os.stat(cgroups.docker).st_ino, cgroup_path=cgroups.docker,
            container_id=DOCKER_CONTAINER, attach_flags="multi",
        )  # fmt: skip
        found = discover(programs)
        assert found[program_id(both)] == (by_link, by_attach)
        assert found[program_id(docker_prog)] == (in_docker,)

        prog_detach(pod_fd, both, egress)
        prog_detach(docker_fd, docker_prog, ingress)
        found = discover(programs)
        assert found[program_id(both)] == (by_link,)
        assert program_id(docker_prog) not in found
        link.close()
        assert program_id(both) not in discover(programs)


FLOW_DISSECTOR_PROG_TYPE = 22  # BPF_PROG_TYPE_FLOW_DISSECTOR
SK_LOOKUP_PROG_TYPE = 30  # BPF_PROG_TYPE_SK_LOOKUP

# A child in its own network namespace attaches a flow dissector there with PROG_ATTACH
# (the kernel attaches to the caller's namespace), prints its id and waits; a line on stdin
# detaches it, the end of stdin ends the child.
FLOW_DISSECTOR_CHILD = f"""
import sys
from otel_bpf.demo.netns import unshare_net
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import Cmd, ProgAttachAttr
from otel_bpf.kernel.loader import load_program, program_id
from otel_bpf.kernel.syscall import bpf
unshare_net()
at = {attach_type("flow_dissector")}
fd = load_program({FLOW_DISSECTOR_PROG_TYPE}, asm.assemble([asm.mov64_imm(asm.R0, 0),
                  asm.exit_()]), "{PREFIX}flow", expected_attach_type=at)
bpf(Cmd.PROG_ATTACH, ProgAttachAttr(attach_bpf_fd=fd, attach_type=at), "attach")
print(program_id(fd), flush=True)
sys.stdin.readline()
bpf(Cmd.PROG_DETACH, ProgAttachAttr(attach_bpf_fd=fd, attach_type=at), "detach")
print("detached", flush=True)
sys.stdin.read()
"""


def test_flow_dissector_on_a_namespace() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", FLOW_DISSECTOR_CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": TREE},
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        line = child.stdout.readline()
        assert line.strip().isdigit(), f"child failed to start: {line!r}"
        prog = int(line)
        ino = os.stat(f"/proc/{child.pid}/ns/net").st_ino
        assert ino != os.stat("/proc/self/ns/net").st_ino
        found = discover({prog: "flow_dissector"})
        assert found[prog] == (
            Attachment("netns", "prog_attach", None, "flow_dissector", f"net:[{ino}]", netns=ino),
        )
        child.stdin.write("detach\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "detached"
        assert prog not in discover({prog: "flow_dissector"})
        child.stdin.close()
        assert child.wait(30) == 0
    finally:
        child.kill()
        child.wait(30)
        child.stdout.close()
        with contextlib.suppress(OSError):
            child.stdin.close()


def test_sk_lookup_is_attached_by_link_only() -> None:
    at = attach_type("sk_lookup")
    with load_owned_program(
        SK_LOOKUP_PROG_TYPE, RETURN_1, f"{PREFIX}skl", expected_attach_type=at
    ) as prog:
        netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        try:
            with pytest.raises(BpfError) as refused:
                prog_attach(netns_fd, prog, at)
        finally:
            os.close(netns_fd)
    assert refused.value.errno == errno.EINVAL


SK_SKB_PROG_TYPE = 14  # BPF_PROG_TYPE_SK_SKB
SK_MSG_PROG_TYPE = 16  # BPF_PROG_TYPE_SK_MSG


def test_sockmap_programs() -> None:
    skb_verdict = attach_type("sk_skb_verdict")
    msg_verdict = attach_type("sk_msg_verdict")
    with ExitStack() as stack:
        sockmap = stack.enter_context(create_owned_map(MapType.SOCKMAP, 4, 4, 1, f"{PREFIX}sm"))
        sockhash = stack.enter_context(create_owned_map(MapType.SOCKHASH, 4, 4, 1, f"{PREFIX}sh"))
        skb = stack.enter_context(
            load_owned_program(
                SK_SKB_PROG_TYPE, RETURN_1, f"{PREFIX}skb", expected_attach_type=skb_verdict
            )
        )
        msg = stack.enter_context(
            load_owned_program(
                SK_MSG_PROG_TYPE, RETURN_1, f"{PREFIX}msg", expected_attach_type=msg_verdict
            )
        )
        prog_attach(sockmap.fileno(), skb, skb_verdict)
        prog_attach(sockmap.fileno(), msg, msg_verdict)
        # The same sk_msg program on the sockhash by a link (6.10): left to the links.
        link = create_owned_link(msg, sockhash.fileno(), msg_verdict)
        programs = {program_id(skb): "sk_skb", program_id(msg): "sk_msg"}
        found = discover(programs)
        in_map = f"map {sockmap.id}"
        assert found[program_id(skb)] == (
            Attachment("sockmap", "prog_attach", None, "sk_skb_verdict", in_map, map_id=sockmap.id),
        )
        assert found[program_id(msg)] == (
            Attachment(
                "sockmap", "link", link.id, "sk_msg_verdict", f"map {sockhash.id}",
                map_id=sockhash.id,
            ),
            Attachment(
                "sockmap", "prog_attach", None, "sk_msg_verdict", in_map, map_id=sockmap.id
            ),
        )  # fmt: skip
        prog_detach(sockmap.fileno(), skb, skb_verdict)
        prog_detach(sockmap.fileno(), msg, msg_verdict)
        link.close()
        found = discover(programs)
        assert program_id(skb) not in found and program_id(msg) not in found


KPROBE_PROG_TYPE = 2  # BPF_PROG_TYPE_KPROBE: kprobes and uprobes
PERF_EVENT_PROG_TYPE = 7
PERF_EVENT_IOC_SET_BPF = 0x40042408  # _IOW('$', 8, __u32)
PERF_TYPE_SOFTWARE = 1
PERF_ATTR_SIZE = 128
_NR_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}


def perf_event_open(event_type: int, config: int, config1: int = 0, config2: int = 0) -> int:
    """A perf event counting on CPU 0 for every process, disabled: a program set on it never
    runs (the uprobe's file is executed by nobody either)."""
    attr = bytearray(PERF_ATTR_SIZE)
    # type, size, config, sample_period (huge), then the flags word: bit 0 = disabled.
    struct.pack_into("<IIQQ", attr, 0, event_type, PERF_ATTR_SIZE, config, 1 << 40)
    struct.pack_into("<Q", attr, 40, 1)
    struct.pack_into("<QQ", attr, 56, config1, config2)
    buf = ctypes.create_string_buffer(bytes(attr), PERF_ATTR_SIZE)
    nr = _NR_PERF_EVENT_OPEN[os.uname().machine]
    fd = int(
        libc.syscall(
            ctypes.c_long(nr), buf, ctypes.c_int(-1), ctypes.c_int(0), ctypes.c_int(-1),
            ctypes.c_ulong(8),  # PERF_FLAG_FD_CLOEXEC
        )
    )  # fmt: skip
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"perf_event_open: {os.strerror(err)}")
    return fd


def test_uprobe_perf_event(tmp_path: os.PathLike[str]) -> None:
    target = os.path.join(os.fspath(tmp_path), "uprobe_target")
    with open(target, "wb") as f:
        f.write(b"\x90" * 8192)
    with open("/sys/bus/event_source/devices/uprobe/type") as f:
        uprobe_pmu = int(f.read())
    path = ctypes.create_string_buffer(target.encode())
    with ExitStack() as stack:
        prog = stack.enter_context(load_owned_program(KPROBE_PROG_TYPE, RETURN_0, f"{PREFIX}up"))
        event = perf_event_open(uprobe_pmu, 0, ctypes.addressof(path), 0x100)
        open_events = [event]
        stack.callback(lambda: [os.close(fd) for fd in open_events])
        fcntl.ioctl(event, PERF_EVENT_IOC_SET_BPF, prog.fileno())
        # A perf_event program on a software event: the kernel does not say which program
        # (EOPNOTSUPP), so nothing can be reported for it.
        sw_prog = stack.enter_context(
            load_owned_program(PERF_EVENT_PROG_TYPE, RETURN_0, f"{PREFIX}sw")
        )
        sw_event = perf_event_open(PERF_TYPE_SOFTWARE, 0)  # PERF_COUNT_SW_CPU_CLOCK
        stack.callback(os.close, sw_event)
        fcntl.ioctl(sw_event, PERF_EVENT_IOC_SET_BPF, sw_prog.fileno())
        assert task_fd_query(os.getpid(), sw_event) is None

        programs = {program_id(prog): "kprobe", program_id(sw_prog): "perf_event"}
        found = discover(programs)
        assert found[program_id(prog)] == (
            Attachment(
                "uprobe", "perf_event", None, None, f"uprobe {target}+0x100",
                pid=os.getpid(), fd=event,
            ),
        )  # fmt: skip
        assert program_id(sw_prog) not in found
        os.close(open_events.pop())  # the only way to take a program off a perf event
        assert program_id(prog) not in discover(programs)


def test_perf_event_source_stays_idle_without_candidates() -> None:
    source = PerfEventSource()
    assert source.read(DiscoveryContext(Names(), {1: "socket_filter", 2: "cgroup_skb"})) == {}
    assert source.queries == 0


def test_the_walk_finds_every_cgroup(cgroups: Cgroups) -> None:
    from otel_bpf.kernel.cgroup_tree import walk_cgroups

    # Children named like control files ("memory.odd", "cpu"): told apart from the files
    # by the directory's link count, which a listing of names alone does not match.
    top = os.path.dirname(os.path.dirname(cgroups.docker))
    for odd in ("memory.odd", "memory.odd/cpu", "plain", "cgroup.x.slice"):
        os.mkdir(os.path.join(top, odd))
    mount = cgroup.cgroup2_mount()
    expected = {(os.stat(d).st_ino, d) for d, _dirs, _files in os.walk(mount)}
    walked = [(cgroup_id, path) for _fd, cgroup_id, path in walk_cgroups(mount)]
    assert len(walked) == len(expected) and set(walked) == expected
    assert walked[0] == (os.stat(mount).st_ino, mount)
