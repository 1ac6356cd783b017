"""Where each program is attached, in ``bpftop-otel --live`` on the real kernel (tmux).

The first test holds two programs and attaches them through BPF links: a cgroup_skb program
on a cgroup named like a Kubernetes pod's containerd container
(``<cgroup2>/otel-bpf-live-<pid>.slice/kubepods-besteffort-pod<uid>.slice/
cri-containerd-<64 hex>.scope``) and an XDP program on ``lo``.  Filtering the live view by the
container id and by ``xdp lo`` must show each program with exactly the expected Attached cell
and detail listing; once the links are closed (the programs stay loaded, so only the next
discovery, at most 10 s later, can tell) the Attached cell of both must read ``-``.

The second shows every real attach case of one child process at once: on veths in the
child's own network namespace, XDP without a link (generic mode) and by a link, cls_bpf
filters on clsact ingress and egress (rtnetlink; one program on both too, shown with ``+1``)
and a tcx link; an sk_lookup link on that namespace; a cgroup_skb program attached with
``BPF_PROG_ATTACH`` (``BPF_F_ALLOW_MULTI``) to one container's cgroup of a pod and one by a
link to a Docker container's cgroup; a socket filter on the child's socket; the child itself
moved into another container's cgroup of the pod, so the owner line of every program names
that container and the pod.  Each program, filtered by its name, must show exactly its
Attached cell, detail listing and owner line; once everything is detached (the programs stay
loaded), ``-`` and ``Attached: nowhere found``.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kernel_progs import TREE
from test_live_tmux import Pane, live_args, start, table_shown  # noqa: F401  (start: fixture)

from otel_bpf.demo import cgroup
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import AttachType, ProgType
from otel_bpf.kernel.attach import cgroup2_root
from otel_bpf.kernel.fd import KernelFd
from otel_bpf.kernel.links import create_owned_link
from otel_bpf.kernel.loader import load_owned_program

pytestmark = [pytest.mark.e2e, pytest.mark.kernel, pytest.mark.timeout(60)]

WIDTH = 160
"""Wide enough for every column with the whole Attached cell (test_live_tmux's panes are 120
wide: the cell would be cut, as it is on a terminal that narrow)."""
PREFIX = f"otel_la{os.getpid() % 10000}_"
SLICE_PREFIX = "otel-bpf-live-"
RETURN_1 = asm.assemble([asm.mov64_imm(asm.R0, 1), asm.exit_()])
XDP_PASS = asm.assemble([asm.mov64_imm(asm.R0, 2), asm.exit_()])
XDP_FLAGS_SKB_MODE = 1 << 1
DISCOVERY_WAIT = 14.0
"""Seconds for the view to show a detach: the next discovery is at most 10 s away."""


@dataclass
class Pod:
    container_id: str
    pod_uid: str
    scope: str
    """The container's cgroup directory (absolute path)."""


def _sweep_stale(root: str, prefix: str = SLICE_PREFIX) -> None:
    """Directories left by a run that was killed (its pid no longer alive)."""
    for top in glob.glob(os.path.join(root, f"{prefix}*.slice")):
        pid = os.path.basename(top)[len(prefix) : -len(".slice")]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                for path in sorted(glob.glob(os.path.join(top, "**"), recursive=True))[::-1]:
                    os.rmdir(path)


@pytest.fixture
def pod() -> Iterator[Pod]:
    root = cgroup2_root()
    _sweep_stale(root)
    container_id = uuid.uuid4().hex + uuid.uuid4().hex
    pod_uid = str(uuid.uuid4())
    top = os.path.join(root, f"{SLICE_PREFIX}{os.getpid()}.slice")
    pod_dir = os.path.join(top, f"kubepods-besteffort-pod{pod_uid.replace('-', '_')}.slice")
    scope = os.path.join(pod_dir, f"cri-containerd-{container_id}.scope")
    made: list[str] = []
    try:
        for path in (top, pod_dir, scope):
            os.mkdir(path)
            made.append(path)
        yield Pod(container_id, pod_uid, scope)
    finally:
        for path in reversed(made):
            os.rmdir(path)


def row(text: str, name: str) -> str | None:
    """The table row of the program named ``name`` (right-stripped), if on screen (not the
    header line, which shows a filter typed as ``name``)."""
    return next(
        (ln.rstrip() for ln in text.splitlines() if f" {name} " in ln and "filter: " not in ln),
        None,
    )


def attached(text: str, name: str, cell: str) -> bool:
    """Whether the row of ``name`` ends with the Attached cell ``cell`` (the last column)."""
    found = row(text, name)
    return found is not None and found.endswith(f" {cell}")


def set_filter(pane: Pane, text: str) -> None:
    pane.keys("Escape", "f")  # Esc on the table clears the filter; f starts a new one
    pane.literal(text)
    pane.keys("Enter")
    pane.wait(lambda t: f"filter: {text} (" in t, 3, f"the filter {text!r}")


def test_attach_points_in_the_table_detail_and_filter(
    start: Callable[..., Pane],  # noqa: F811
    pod: Pod,
) -> None:
    began = time.monotonic()
    with ExitStack() as stack:
        skb = stack.enter_context(
            load_owned_program(
                ProgType.CGROUP_SKB,
                RETURN_1,
                f"{PREFIX}cg",
                expected_attach_type=AttachType.CGROUP_INET_EGRESS,
            )
        )
        cg_fd = os.open(pod.scope, os.O_RDONLY | os.O_DIRECTORY)
        try:
            cg_link: KernelFd = create_owned_link(skb, cg_fd, AttachType.CGROUP_INET_EGRESS)
        finally:
            os.close(cg_fd)
        xdp = stack.enter_context(
            load_owned_program(
                ProgType.XDP, XDP_PASS, f"{PREFIX}xdp", expected_attach_type=AttachType.XDP
            )
        )
        xdp_link = create_owned_link(xdp, 1, AttachType.XDP, XDP_FLAGS_SKB_MODE)  # lo
        stack.callback(xdp_link.close)  # closed before the programs (a no-op when done)
        stack.callback(cg_link.close)

        pane = start(live_args())
        pane.tmux("resize-window", "-t", pane.name, "-x", str(WIDTH))
        pane.wait(table_shown, 20, "the table")

        # The cgroup program, found by its container's id.
        set_filter(pane, pod.container_id[:16])
        short = f"cgroup .../cri-containerd-{pod.container_id[:12]}.scope"
        text = pane.wait(
            lambda t: attached(t, f"{PREFIX}cg", short), 5, "the cgroup program's Attached cell"
        )
        assert f"{PREFIX}xdp" not in text  # the filter shows only what is on that cgroup
        print(text)
        pane.keys("Enter")
        head = (
            f"  cgroup via link {cg_link.id} type cgroup_inet_egress"
            f" container {pod.container_id[:12]} pod {pod.pod_uid} qos besteffort target "
        )
        # The path is longer than the line: it keeps its end, where the scope's name is.
        assert len(head) + len(pod.scope) > WIDTH
        listing = head + "~" + pod.scope[-(WIDTH - len(head) - 1) :]
        pane.wait(lambda t: "Attached: 1" in t, 3, "the detail view's Attached section")
        text = pane.wait(lambda t: listing in t.splitlines(), 3, "the cgroup listing")
        assert f"Program {skb.id} ({PREFIX}cg)" in text
        print(text)
        pane.keys("Escape")
        pane.wait(lambda t: "rows " in t, 3, "the table again")

        # The XDP program, found by what the column shows ("xdp lo").
        set_filter(pane, "xdp lo")
        pane.wait(lambda t: attached(t, f"{PREFIX}xdp", "xdp lo"), 5, "the XDP program")
        pane.keys("Enter")
        # lo of this process's own network namespace: the plain name, with the namespace.
        netns = os.stat("/proc/self/ns/net").st_ino
        listing = f"  xdp via link {xdp_link.id} ifindex 1 netns {netns} target lo"
        pane.wait(lambda t: listing in [ln.rstrip() for ln in t.splitlines()], 3, "xdp listing")
        pane.keys("Escape")
        pane.wait(lambda t: "rows " in t, 3, "the table again")

        # Detached: the programs stay loaded, and the next discovery finds them nowhere.
        set_filter(pane, PREFIX)
        xdp_link.close()
        cg_link.close()
        detached = time.monotonic()
        text = pane.wait(
            lambda t: attached(t, f"{PREFIX}cg", "-") and attached(t, f"{PREFIX}xdp", "-"),
            DISCOVERY_WAIT,
            "both programs attached nowhere",
        )
        took = time.monotonic() - detached
        pane.keys("q")
        assert pane.exit_status(10) == 0
    print(f"detach shown after {took:.1f} s; test took {time.monotonic() - began:.1f} s\n{text}")
    assert not re.search(r"xdp lo|cri-containerd", text), text


# Every real attach case at once, held by one child process.

ALL_PREFIX = f"olt{os.getpid() % 10000}_"
"""Program names: this prefix and one of :data:`ALL_NAMES` (at most 15 characters)."""
ALL_SLICE_PREFIX = "otel-bpf-liveall-"
CHILD_COMM = "otel_ltchild"
SK_LOOKUP_PROG_TYPE = 30  # BPF_PROG_TYPE_SK_LOOKUP
SK_LOOKUP_ATTACH_TYPE = 36  # BPF_SK_LOOKUP
ALL_NAMES = ("xdpnl", "xdplk", "tcin", "tcout", "tcboth", "tcxl", "cgpa", "cglk", "sockf", "sklk")
"""No name contains another: filtering by one shows its program alone."""
STEP = 5.0
"""Seconds for the view to show one step (a filter, the detail view, the table again)."""

# The child reads its settings (one JSON line), names itself, moves into the owner's
# container cgroup, unshares a network namespace with four veth pairs and attaches there:
# XDP without a link on ltx0 (generic mode) and by a link on ltl0, cls_bpf filters on ltc0's
# clsact ingress and egress (one program each) and one program on both of ltc1's, a tcx link
# on ltt0 and an sk_lookup link on the namespace; then a cgroup_skb program by PROG_ATTACH
# (ALLOW_MULTI) on the other container's cgroup of the pod, one by a link on a Docker
# container's cgroup, and a socket filter on a UDP socket.  It prints what it made, detaches
# everything on the next line of stdin (the programs stay loaded: it keeps their fds) and
# ends with its stdin (so it ends with the test, however that ends).
ALL_CHILD = f"""
import json, os, socket, sys
from otel_bpf.demo import netns
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import BPF_F_ALLOW_MULTI, AttachType, Cmd, ProgAttachAttr, ProgType
from otel_bpf.kernel.links import create_owned_link
from otel_bpf.kernel.loader import attach_socket_filter, load_owned_program
from otel_bpf.kernel.syscall import bpf

conf = json.loads(sys.stdin.readline())
with open("/proc/self/comm", "w") as f:
    f.write(conf["comm"])
with open(os.path.join(conf["owner_scope"], "cgroup.procs"), "w") as f:
    f.write("0")
netns.unshare_net()
netns.disable_ipv6()
for a, b in (("ltx0", "ltx1"), ("ltl0", "ltl1"), ("ltc0", "ltc1"), ("ltt0", "ltt1")):
    netns.create_veth(a, b)


def code(r0):
    return asm.assemble([asm.mov64_imm(asm.R0, r0), asm.exit_()])


def load(name, prog_type, r0, at=0):
    return load_owned_program(prog_type, code(r0), conf["prefix"] + name, expected_attach_type=at)


progs = {{
    "xdpnl": load("xdpnl", ProgType.XDP, 2, AttachType.XDP),
    "xdplk": load("xdplk", ProgType.XDP, 2, AttachType.XDP),
    "tcin": load("tcin", ProgType.SCHED_CLS, 0),
    "tcout": load("tcout", ProgType.SCHED_CLS, 0),
    "tcboth": load("tcboth", ProgType.SCHED_CLS, 0),
    "tcxl": load("tcxl", ProgType.SCHED_CLS, 0),
    "cgpa": load("cgpa", ProgType.CGROUP_SKB, 1, AttachType.CGROUP_INET_EGRESS),
    "cglk": load("cglk", ProgType.CGROUP_SKB, 1, AttachType.CGROUP_INET_INGRESS),
    "sockf": load("sockf", ProgType.SOCKET_FILTER, -1),
    "sklk": load("sklk", {SK_LOOKUP_PROG_TYPE}, 1, {SK_LOOKUP_ATTACH_TYPE}),
}}
netns.set_xdp(progs["xdpnl"], "ltx0", generic=True)
netns.add_clsact("ltc0")
netns.add_bpf_filter(progs["tcin"], "ltc0", ingress=True, priority=1)
netns.add_bpf_filter(progs["tcout"], "ltc0", ingress=False, priority=2)
netns.add_clsact("ltc1")
netns.add_bpf_filter(progs["tcboth"], "ltc1", ingress=True, priority=3)
netns.add_bpf_filter(progs["tcboth"], "ltc1", ingress=False, priority=4)
links = {{
    "xdplk": netns.attach_xdp(progs["xdplk"], "ltl0"),
    "tcxl": create_owned_link(progs["tcxl"], netns.ifindex("ltt0"), AttachType.TCX_INGRESS),
}}
ns_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
links["sklk"] = create_owned_link(progs["sklk"], ns_fd, {SK_LOOKUP_ATTACH_TYPE})
os.close(ns_fd)
docker_fd = os.open(conf["docker_scope"], os.O_RDONLY | os.O_DIRECTORY)
links["cglk"] = create_owned_link(progs["cglk"], docker_fd, AttachType.CGROUP_INET_INGRESS)
os.close(docker_fd)
cg_fd = os.open(conf["attach_scope"], os.O_RDONLY | os.O_DIRECTORY)


def on_cgroup(cmd, flags=0):
    attr = ProgAttachAttr(
        target_fd=cg_fd,
        attach_bpf_fd=progs["cgpa"].fileno(),
        attach_type=AttachType.CGROUP_INET_EGRESS,
        attach_flags=flags,
    )
    bpf(cmd, attr, "cgroup attach")


on_cgroup(Cmd.PROG_ATTACH, BPF_F_ALLOW_MULTI)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
attach_socket_filter(sock, progs["sockf"])
print(json.dumps({{
    "netns": os.stat("/proc/self/ns/net").st_ino,
    "ids": {{name: p.id for name, p in progs.items()}},
    "ifindex": {{n: netns.ifindex(n) for n in ("ltx0", "ltl0", "ltc0", "ltc1", "ltt0")}},
    "links": {{name: link.id for name, link in links.items()}},
    "fd": sock.fileno(),
}}), flush=True)
sys.stdin.readline()
netns.set_xdp(None, "ltx0")
netns.delete_filters("ltc0", ingress=True, priority=1)
netns.delete_filters("ltc0", ingress=False, priority=2)
netns.delete_filters("ltc1", ingress=True, priority=3)
netns.delete_filters("ltc1", ingress=False, priority=4)
for link in links.values():
    link.close()
on_cgroup(Cmd.PROG_DETACH)
sock.close()
print("detached", flush=True)
sys.stdin.read()
"""


@dataclass
class PodDirs:
    """Two containers of one pod (the cgroup_skb PROG_ATTACH target and the child's home)
    and a Docker container (the cgroup link's target)."""

    pod_uid: str
    attach_id: str
    attach_scope: str
    owner_id: str
    owner_scope: str
    docker_id: str
    docker_scope: str


def _rmdir(path: str) -> None:
    # A reaped process has left its cgroup, but allow the kernel a moment before rmdir.
    deadline = time.monotonic() + 5
    while not cgroup.remove(path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(path), f"{path} remains"


@pytest.fixture
def pod_dirs() -> Iterator[PodDirs]:
    root = cgroup2_root()
    _sweep_stale(root, ALL_SLICE_PREFIX)
    pod_uid = str(uuid.uuid4())
    attach_id, owner_id, docker_id = (uuid.uuid4().hex + uuid.uuid4().hex for _ in range(3))
    top = os.path.join(root, f"{ALL_SLICE_PREFIX}{os.getpid()}.slice")
    pod_dir = os.path.join(top, f"kubepods-besteffort-pod{pod_uid.replace('-', '_')}.slice")
    attach_scope = os.path.join(pod_dir, f"cri-containerd-{attach_id}.scope")
    owner_scope = os.path.join(pod_dir, f"cri-containerd-{owner_id}.scope")
    docker_scope = os.path.join(top, f"docker-{docker_id}.scope")  # the systemd driver's
    made: list[str] = []
    try:
        for path in (top, pod_dir, attach_scope, owner_scope, docker_scope):
            os.mkdir(path)
            made.append(path)
        yield PodDirs(
            pod_uid, attach_id, attach_scope, owner_id, owner_scope, docker_id, docker_scope
        )
    finally:
        for path in reversed(made):
            _rmdir(path)


@dataclass
class AllChild:
    process: subprocess.Popen[str]
    state: dict[str, Any]

    def line(self, timeout: float) -> str:
        """The child's next line of output, waited for at most ``timeout`` seconds."""
        out = self.process.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], timeout)
        assert ready, f"the child said nothing in {timeout} s"
        return out.readline()

    def detach(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("detach\n")
        self.process.stdin.flush()
        assert self.line(5).strip() == "detached"


@contextlib.contextmanager
def all_child(dirs: PodDirs, log: Path) -> Iterator[AllChild]:
    """The child of :data:`ALL_CHILD`, set up; killed at the end of the block."""
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", ALL_CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONPATH": TREE},
        )
    try:
        child = AllChild(process, {})
        assert process.stdin is not None
        conf = {
            "prefix": ALL_PREFIX,
            "comm": CHILD_COMM,
            "owner_scope": dirs.owner_scope,
            "attach_scope": dirs.attach_scope,
            "docker_scope": dirs.docker_scope,
        }
        process.stdin.write(json.dumps(conf) + "\n")
        process.stdin.flush()
        line = child.line(20)
        assert line.startswith("{"), f"the child failed: {line!r}\n{log.read_text()}"
        child.state = json.loads(line)
        yield child
    finally:
        process.kill()
        process.wait(10)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()


def fit_target(head: str, target: str) -> str:
    """A detail listing line as the view draws it ``WIDTH`` wide: a target too long for the
    line keeps its end, after ``~``."""
    if len(head) + len(target) <= WIDTH:
        return head + target
    return head + "~" + target[-(WIDTH - len(head) - 1) :]


def lines_after(text: str, title: str, count: int) -> list[str] | None:
    """The ``count`` lines after the line ``title`` (right-stripped), if it is on screen."""
    lines = [ln.rstrip() for ln in text.splitlines()]
    if title not in lines:
        return None
    at = lines.index(title) + 1
    return lines[at : at + count]


def test_every_attach_case_in_the_table_and_detail(
    start: Callable[..., Pane],  # noqa: F811
    pod_dirs: PodDirs,
    tmp_path: Path,
) -> None:
    began = time.monotonic()
    with all_child(pod_dirs, tmp_path / "child.err") as child:
        pid = child.process.pid
        ids: dict[str, int] = child.state["ids"]
        links: dict[str, int] = child.state["links"]
        ifx: dict[str, int] = child.state["ifindex"]
        ino: int = child.state["netns"]
        fd: int = child.state["fd"]
        assert ino != os.stat("/proc/self/ns/net").st_ino
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        pod = f"container {pod_dirs.attach_id[:12]} pod {pod_dirs.pod_uid}"

        def dev(name: str) -> str:
            """The short form of a device in the child's namespace."""
            return f"{name}@ns...{str(ino)[-4:]}"

        def on(name: str) -> str:
            """The detail's fields of a device in the child's namespace."""
            return f"ifindex {ifx[name]} ifname {name} netns {ino}"

        # Per program: the Attached cell and the detail view's listing lines.
        expected: dict[str, tuple[str, list[str]]] = {
            "xdpnl": (
                f"xdp {dev('ltx0')}",
                [f"  xdp via netlink {on('ltx0')} mode skb target ltx0@netns:{ino}"],
            ),
            "xdplk": (
                f"xdp {dev('ltl0')}",
                [f"  xdp via link {links['xdplk']} {on('ltl0')} target ltl0@netns:{ino}"],
            ),
            "tcin": (
                f"tc {dev('ltc0')} in",
                [
                    f"  tc via netlink {on('ltc0')} direction ingress priority 1"
                    f" target ltc0@netns:{ino}"
                ],
            ),
            "tcout": (
                f"tc {dev('ltc0')} out",
                [
                    f"  tc via netlink {on('ltc0')} direction egress priority 2"
                    f" target ltc0@netns:{ino}"
                ],
            ),
            # One program, two attachments: the first in the cell, with "+1"; both listed.
            "tcboth": (
                f"tc {dev('ltc1')} in +1",
                [
                    f"  tc via netlink {on('ltc1')} direction ingress priority 3"
                    f" target ltc1@netns:{ino}",
                    f"  tc via netlink {on('ltc1')} direction egress priority 4"
                    f" target ltc1@netns:{ino}",
                ],
            ),
            "tcxl": (
                f"tcx {dev('ltt0')} in",
                [
                    f"  tcx via link {links['tcxl']} type tcx_ingress {on('ltt0')}"
                    f" direction ingress target ltt0@netns:{ino}"
                ],
            ),
            "cgpa": (
                f"cgroup .../cri-containerd-{pod_dirs.attach_id[:12]}.scope",
                [
                    fit_target(
                        f"  cgroup via prog_attach type cgroup_inet_egress flags multi {pod}"
                        " qos besteffort target ",
                        pod_dirs.attach_scope,
                    )
                ],
            ),
            "cglk": (
                f"cgroup .../docker-{pod_dirs.docker_id[:12]}.scope",
                [
                    fit_target(
                        f"  cgroup via link {links['cglk']} type cgroup_inet_ingress"
                        f" container {pod_dirs.docker_id[:12]} target ",
                        pod_dirs.docker_scope,
                    )
                ],
            ),
            "sockf": (
                f"sock {CHILD_COMM}({pid})",
                [
                    f"  socket via socket pid {pid} fd {fd} process {CHILD_COMM}"
                    f" target pid {pid} fd {fd}"
                ],
            ),
            "sklk": (
                f"netns net:[{ino}]",
                [f"  netns via link {links['sklk']} type sk_lookup netns {ino} target net:[{ino}]"],
            ),
        }
        assert set(expected) == set(ALL_NAMES) == set(ids)
        # Every program is the child's, in the owner container of the same pod; the links
        # it holds too.
        home = f"container {pod_dirs.owner_id[:12]} pod {pod_dirs.pod_uid}"

        def owner_line(name: str) -> str:
            via = "link+prog" if name in links else "prog"
            return f"Owners: {CHILD_COMM}({pid}) [{exe}] via {via} {home}"

        pane = start(live_args())
        pane.tmux("resize-window", "-t", pane.name, "-x", str(WIDTH))
        pane.wait(table_shown, 20, "the table")
        set_filter(pane, ALL_PREFIX)
        text = pane.wait(
            lambda t: all(attached(t, ALL_PREFIX + n, c) for n, (c, _) in expected.items()),
            10,
            "every program's Attached cell",
        )
        print(text)

        for name, (cell, listing) in expected.items():
            full = ALL_PREFIX + name
            set_filter(pane, full)
            text = pane.wait(
                lambda t, full=full, cell=cell: attached(t, full, cell),
                STEP,
                f"{full}'s Attached cell",
            )
            assert [n for n in ALL_NAMES if row(text, ALL_PREFIX + n)] == [name], text
            pane.keys("Enter")
            title = f"Program {ids[name]} ({full})"
            section = f"Attached: {len(listing)}"

            def shown(
                t: str,
                title: str = title,
                section: str = section,
                listing: list[str] = listing,
                owner: str = owner_line(name),
            ) -> bool:
                lines = [ln.rstrip() for ln in t.splitlines()]
                return (
                    title in lines
                    and lines_after(t, section, len(listing)) == listing
                    and owner in lines
                )

            text = pane.wait(shown, STEP, f"{full}'s detail view")
            print("\n".join(ln.rstrip() for ln in text.splitlines()[:9]))
            pane.keys("Escape")
            pane.wait(lambda t: "rows " in t, STEP, "the table again")

        # The filter matches attach targets: the device shows the two programs on it.
        set_filter(pane, "ltc0")
        text = pane.wait(lambda t: row(t, f"{ALL_PREFIX}tcout"), STEP, "the programs on ltc0")
        assert [n for n in ALL_NAMES if row(text, ALL_PREFIX + n)] == ["tcin", "tcout"], text

        # Detached: the programs stay loaded (the set of ids is the same), so the next
        # periodic discovery, at most 10 s away, finds them nowhere.
        set_filter(pane, ALL_PREFIX)
        child.detach()
        detached = time.monotonic()
        text = pane.wait(
            lambda t: all(attached(t, ALL_PREFIX + n, "-") for n in expected),
            DISCOVERY_WAIT,
            "every program attached nowhere",
        )
        took = time.monotonic() - detached
        # The detail views say so too; the child now holds every program by its fd alone.
        for name in expected:
            full = ALL_PREFIX + name
            set_filter(pane, full)
            pane.keys("Enter")
            wanted = (
                f"Program {ids[name]} ({full})",
                "Attached: nowhere found",
                f"Owners: {CHILD_COMM}({pid}) [{exe}] via prog {home}",
            )
            pane.wait(
                lambda t, wanted=wanted: set(wanted) <= {ln.rstrip() for ln in t.splitlines()},
                STEP,
                f"{full}'s detail view, detached",
            )
            pane.keys("Escape")
            pane.wait(lambda t: "rows " in t, STEP, "the table again")
        pane.keys("q")
        assert pane.exit_status(10) == 0
    print(f"detach shown after {took:.1f} s; test took {time.monotonic() - began:.1f} s\n{text}")
