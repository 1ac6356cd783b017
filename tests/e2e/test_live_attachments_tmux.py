"""Where each program is attached, in ``bpftop-otel --live`` on the real kernel (tmux).

The test holds two programs and attaches them through BPF links: a cgroup_skb program on a
cgroup named like a Kubernetes pod's containerd container
(``<cgroup2>/otel-bpf-live-<pid>.slice/kubepods-besteffort-pod<uid>.slice/
cri-containerd-<64 hex>.scope``) and an XDP program on ``lo``.  Filtering the live view by the
container id and by ``xdp lo`` must show each program with exactly the expected Attached cell
and detail listing; once the links are closed (the programs stay loaded, so only the next
discovery, at most 10 s later, can tell) the Attached cell of both must read ``-``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
from test_live_tmux import Pane, live_args, start, table_shown  # noqa: F401  (start: fixture)

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


def _sweep_stale(root: str) -> None:
    """Directories left by a run that was killed (its pid no longer alive)."""
    for top in glob.glob(os.path.join(root, f"{SLICE_PREFIX}*.slice")):
        pid = os.path.basename(top)[len(SLICE_PREFIX) : -len(".slice")]
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
    """The table row of the program named ``name`` (right-stripped), if on screen."""
    return next((ln.rstrip() for ln in text.splitlines() if f" {name} " in ln), None)


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
