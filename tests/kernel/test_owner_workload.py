"""An owner in a cgroup named like a Docker container (systemd driver) is attributed to it.

A child process holding a socket filter is moved into
``<cgroup2>/otel-bpf-test-<pid>.slice/docker-<64 hex>.scope``; both sampling paths, the JSON
objects and ``bpftop-otel --json --owners`` must then name that container and cgroup.  The
child goes back to its own cgroup and the two directories are removed afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kernel_progs import holding_child

from otel_bpf.demo import cgroup
from otel_bpf.kernel.open_source import open_source
from otel_bpf.kernel.source import Mode, SourceOptions

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(90)]

CONTAINER_ID = "c0ffee" + "0123456789abcdef" * 3 + "0a1b2c3d4e"
assert len(CONTAINER_ID) == 64
SLICE_PREFIX = "otel-bpf-test-"

HOLDER = """
import sys
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.loader import load_program, program_id
fd = load_program(ProgType.SOCKET_FILTER,
                  asm.assemble([asm.mov64_imm(asm.R0, -1), asm.exit_()]), "otel_t_workload")
print(program_id(fd), flush=True)
sys.stdin.read()
"""


@dataclass
class Contained:
    pid: int
    prog_id: int
    cgroup: str
    """The scope's path as /proc/<pid>/cgroup shows it (from the hierarchy's root)."""


def _move(pid: int, directory: str) -> None:
    with open(os.path.join(directory, "cgroup.procs"), "w") as f:
        f.write(str(pid))


def _remove(path: str) -> None:
    # A reaped process has left its cgroup, but allow the kernel a moment before rmdir.
    deadline = time.monotonic() + 5
    while not cgroup.remove(path) and time.monotonic() < deadline:
        time.sleep(0.05)


def _sweep_stale(mount: str) -> None:
    """Directories left by a run that was killed (its pid no longer alive)."""
    for slice_dir in glob.glob(os.path.join(mount, f"{SLICE_PREFIX}*.slice")):
        pid = os.path.basename(slice_dir)[len(SLICE_PREFIX) : -len(".slice")]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                for scope in glob.glob(os.path.join(slice_dir, "*.scope")):
                    os.rmdir(scope)
                os.rmdir(slice_dir)


@pytest.fixture(scope="module")
def contained() -> Iterator[Contained]:
    mount = cgroup.cgroup2_mount()
    _sweep_stale(mount)
    slice_dir = scope = None
    try:
        with holding_child(HOLDER) as child:
            home = cgroup.current_cgroup(child.pid)
            slice_dir = cgroup.create(f"{SLICE_PREFIX}{os.getpid()}.slice")
            scope = cgroup.create(f"docker-{CONTAINER_ID}.scope", slice_dir)
            _move(child.pid, scope)
            try:
                yield Contained(child.pid, child.prog_id, "/" + os.path.relpath(scope, mount))
            finally:
                _move(child.pid, home)
    finally:
        for path in (scope, slice_dir):
            if path is not None:
                _remove(path)
                assert not os.path.exists(path), f"{path} remains"


@pytest.mark.parametrize("path", ["syscall", "iterator"])
def test_both_paths_name_the_container_of_the_owner(contained: Contained, path: Mode) -> None:
    with open_source(path, SourceOptions(owners=True)) as source:
        records = source.read().records
    rec = next(r for r in records if r.id == contained.prog_id)
    assert rec.owners is not None
    (owner,) = [o for o in rec.owners if o.pid == contained.pid]
    assert owner.workload.cgroup == contained.cgroup
    assert owner.workload.container_id == CONTAINER_ID
    assert owner.workload.pod_uid is None and owner.workload.qos_class is None
    # This test process is in no container: its own owners (if any) name none.
    assert all(o.workload.container_id is None for o in rec.owners if o.pid == os.getpid())


def test_json_owner_entry_names_the_cgroup_and_container(contained: Contained) -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("bpftop-otel")), "--json", "--owners"]
        + ["--count", "1", "--exporter", "none"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    (obj,) = [o for o in map(json.loads, proc.stdout.splitlines()) if o["id"] == contained.prog_id]
    (entry,) = [o for o in obj["owners"] if o["pid"] == contained.pid]
    assert entry["cgroup"] == contained.cgroup
    assert entry["container_id"] == CONTAINER_ID
    assert entry["pod_uid"] is None
