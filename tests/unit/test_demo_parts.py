"""Pieces of the demo workload that need no privileges."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from otel_bpf.demo import cgroup
from otel_bpf.demo import programs as demo
from otel_bpf.demo.worker import one_line
from otel_bpf.demo.workload import normalize_rates
from otel_bpf.kernel.loader import VerifierError

HYBRID = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def test_cgroup2_mount_in_the_hybrid_layout(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(HYBRID)
    assert cgroup.cgroup2_mount(str(mounts)) == "/sys/fs/cgroup/unified"


def test_no_cgroup2_is_a_clear_error(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(HYBRID.replace("cgroup2", "cgroup"))
    with pytest.raises(cgroup.CgroupError, match="no cgroup2"):
        cgroup.cgroup2_mount(str(mounts))


def test_stale_sweep_keeps_live_and_foreign_directories(tmp_path: Path) -> None:
    (tmp_path / f"otel-demo-{os.getpid()}").mkdir()
    (tmp_path / "otel-demo-notapid").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "otel-demo-999999999").mkdir()
    removed = cgroup.remove_stale("otel-demo-", str(tmp_path))
    assert removed == [str(tmp_path / "otel-demo-999999999")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"otel-demo-{os.getpid()}",
        "otel-demo-notapid",
        "other",
    ]


def test_names_fit_the_kernel_and_rates_accept_short_names() -> None:
    assert all(len(n) <= 15 and n.startswith("otel_demo_") for n in demo.PROGRAM_NAMES)
    assert set(demo.DEFAULT_RATES) == set(demo.PROGRAM_NAMES)
    assert normalize_rates({"sock": 5, "otel_demo_xdp": 2.5}) == {
        demo.SOCK: 5.0,
        demo.XDP: 2.5,
    }
    with pytest.raises(ValueError, match="choose from sock, xdp, cgskb, slow"):
        normalize_rates({"tc": 1})


def test_worker_errors_are_one_line() -> None:
    verifier = VerifierError(errno.EACCES, "the kernel rejected program 'x'\nlog line 1", "log")
    assert one_line(verifier) == "the kernel rejected program 'x'"
    assert one_line(PermissionError(errno.EPERM, "permission denied, needs CAP_BPF")) == (
        "permission denied, needs CAP_BPF"
    )
    assert one_line(KeyError("x")) == "KeyError: 'x'"
