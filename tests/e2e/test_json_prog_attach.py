"""``bpftop-otel --json --attachments``: cgroup programs attached with ``BPF_PROG_ATTACH``
to cgroups named like a Kubernetes pod's container and a Docker container show with
``via: prog_attach``, their cgroup and the container and pod it names.

The cgroups are made under ``<cgroup2>/otel-bpf-pae-<pid>`` and removed afterwards (a killed
run's directories are swept by the next)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from peers import cli_env, run_cli

from otel_bpf.demo import cgroup
from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import BPF_F_ALLOW_MULTI, AttachType, Cmd, ProgAttachAttr, ProgType
from otel_bpf.kernel.loader import load_owned_program, program_id
from otel_bpf.kernel.syscall import bpf

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

TEST_DIR_PREFIX = "otel-bpf-pae-"
NAME = f"otel_pae{os.getpid() % 10000}"
POD_UID = "7e1d2e3f-4a5b-6c7d-8e9f-a0b1c2d3e4f5"
POD_CONTAINER = "e2e0ff" + "0123456789abcdef" * 3 + "0a1b2c3d4e"
DOCKER_CONTAINER = "e2ed0c" + "fedcba9876543210" * 3 + "5f6e7d8c9b"
POD_SCOPE = (
    "kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice/cri-containerd-{POD_CONTAINER}.scope"
)
DOCKER_SCOPE = f"system.slice/docker-{DOCKER_CONTAINER}.scope"
RETURN_1 = asm.assemble([asm.mov64_imm(asm.R0, 1), asm.exit_()])


def _remove_tree(top: str) -> None:
    for path, _dirs, _files in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path)


@pytest.fixture
def test_dir() -> Iterator[str]:
    mount = cgroup.cgroup2_mount()
    for stale in glob.glob(os.path.join(mount, f"{TEST_DIR_PREFIX}*")):
        pid = os.path.basename(stale)[len(TEST_DIR_PREFIX) :]
        if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            with contextlib.suppress(OSError):
                _remove_tree(stale)
    top = os.path.join(mount, f"{TEST_DIR_PREFIX}{os.getpid()}")
    os.mkdir(top)
    try:
        yield top
    finally:
        _remove_tree(top)
        assert not os.path.exists(top), f"{top} remains"


def test_prog_attach_cgroups_in_json(test_dir: str) -> None:
    egress = AttachType.CGROUP_INET_EGRESS
    pod = os.path.join(test_dir, POD_SCOPE)
    docker = os.path.join(test_dir, DOCKER_SCOPE)
    ids: dict[str, int] = {}
    with ExitStack() as stack:
        prog = stack.enter_context(
            load_owned_program(ProgType.CGROUP_SKB, RETURN_1, NAME, expected_attach_type=egress)
        )
        for path in (pod, docker):
            os.makedirs(path)
            ids[path] = os.stat(path).st_ino
            fd = cgroup.open_dir(path)
            stack.callback(os.close, fd)
            attr = ProgAttachAttr(
                target_fd=fd,
                attach_bpf_fd=prog.fileno(),
                attach_type=egress,
                attach_flags=BPF_F_ALLOW_MULTI,
            )
            bpf(Cmd.PROG_ATTACH, attr, path)
            # Detached before the directories go (rmdir would detach them too).
            stack.callback(
                bpf,
                Cmd.PROG_DETACH,
                ProgAttachAttr(target_fd=fd, attach_bpf_fd=prog.fileno(), attach_type=egress),
            )
        proc = run_cli(
            [
                *("--json", "--count", "1", "--attachments", "--exporter", "none"),
                *("--name", NAME),
            ],
            timeout=60,
            env=cli_env(),
        )
        assert proc.returncode == 0, proc.stderr
        (obj,) = [
            o for o in map(json.loads, proc.stdout.splitlines()) if o["id"] == program_id(prog)
        ]
    common = {"kind": "cgroup", "via": "prog_attach", "link_id": None}
    common |= {"attach_type": "cgroup_inet_egress", "attach_flags": "multi"}
    expected = [
        {
            **common,
            "target": pod,
            "cgroup_id": ids[pod],
            "cgroup_path": pod,
            "container_id": POD_CONTAINER,
            "pod_uid": POD_UID,
            "qos_class": "burstable",
        },
        {
            **common,
            "target": docker,
            "cgroup_id": ids[docker],
            "cgroup_path": docker,
            "container_id": DOCKER_CONTAINER,
        },
    ]
    # In the order the cgroups were walked, which is the file system's: compared unordered.
    assert sorted(obj["attachments"], key=lambda a: a["target"] != pod) == expected
