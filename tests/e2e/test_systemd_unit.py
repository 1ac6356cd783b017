"""collector-config/systemd/bpftop-otel.service: valid, hardened, and enough for the real work.

systemd cannot start the unit in this container (no systemd as PID 1), so each promise of the
unit is checked the way systemd would enforce it:

- ``systemd-analyze verify`` and ``systemd-analyze security --offline`` on the unit. verify
  needs the ExecStart binary to exist, so it runs on a copy whose ExecStart points at the
  ``bpftop-otel`` of the Python running the tests (the only change to the copy).
- ``SystemCallFilter``/``RestrictAddressFamilies``: every system call and socket family a
  real ``bpftop-otel --owners`` run makes (traced with strace while it samples the demo
  programs and exports to a real OTLP collector) is one the unit allows.
- ``CapabilityBoundingSet``/``AmbientCapabilities``/``DynamicUser``: ``bpftop-otel`` run by
  setpriv as an unprivileged user with exactly the unit's capabilities sees the demo
  programs and their owners; without CAP_SYS_ADMIN it stops with exit status 77; without
  the two capabilities owner lookup uses, it still samples.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from peers import Rotel, cli_env

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "collector-config" / "systemd" / "bpftop-otel.service"
EXEC_START = re.compile(r"^ExecStart=(\S+)(.*)$", re.MULTILINE)


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not installed (Debian package systemd)")
    return path


def bpftop_otel() -> Path:
    """The console script installed next to the Python running the tests."""
    script = Path(sys.executable).parent / "bpftop-otel"
    if not script.exists():
        pytest.fail(f"{script} does not exist: install the package (pip install -e .)")
    return script


def directive(name: str) -> str:
    (value,) = re.findall(rf"^{name}=(.*)$", UNIT.read_text(), re.MULTILINE)
    return value.strip()


def unit_capabilities() -> list[str]:
    """The unit's capabilities in setpriv spelling (``sys_admin``)."""
    bounding = directive("CapabilityBoundingSet").split()
    assert bounding == directive("AmbientCapabilities").split()
    return [c.removeprefix("CAP_").lower() for c in bounding]


def unit_copy_for_this_venv(tmp_path: Path) -> Path:
    """The unit with ExecStart's binary replaced by this venv's bpftop-otel, nothing else."""
    text = UNIT.read_text()
    (match,) = EXEC_START.finditer(text)
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(match.group(0), f"ExecStart={bpftop_otel()}{match.group(2)}"))
    return copy


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    unit = unit_copy_for_this_venv(tmp_path)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify reports unknown keys and bad values as warnings with exit status 0.
    about_unit = [line for line in output.splitlines() if unit.name in line]
    assert not about_unit, output


def test_verify_rejects_a_broken_copy(tmp_path: Path) -> None:
    """The check above can fail: a missing ExecStart binary is an error."""
    analyze = systemd_analyze()
    unit = tmp_path / UNIT.name
    unit.write_text(EXEC_START.sub(r"ExecStart=/nonexistent/bpftop-otel\2", UNIT.read_text()))
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0


def test_unit_exposure_level_is_low(tmp_path: Path) -> None:
    """``systemd-analyze security`` rates the unit at most 3.0 of 10 ("OK" or better)."""
    analyze = systemd_analyze()
    unit = unit_copy_for_this_venv(tmp_path)
    result = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=30", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def syscall_groups(analyze: str) -> dict[str, list[str]]:
    """``systemd-analyze syscall-filter``: every @group with its members."""
    out = subprocess.run(
        [analyze, "syscall-filter"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and not line.strip().startswith("#") and line.strip():
            current.append(line.strip())
    return groups


def allowed_syscalls(analyze: str) -> set[str]:
    groups = syscall_groups(analyze)
    allowed: set[str] = set()
    pending = directive("SystemCallFilter").split()
    seen: set[str] = set()
    while pending:
        item = pending.pop()
        if item in seen:
            continue
        seen.add(item)
        if item.startswith("@"):
            pending.extend(groups[item])
        else:
            allowed.add(item)
    return allowed


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_syscalls_and_socket_families_are_allowed_by_the_unit(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed (Debian package strace)")
    from otel_bpf.demo import DemoWorkload

    trace = tmp_path / "strace.txt"
    args = ["--exporter", "otlp", "--owners", "--interval", "0.5", "--export-interval", "0.5"]
    with Rotel(tmp_path / "rotel") as rotel, DemoWorkload():
        result = subprocess.run(
            [
                strace, "-f", "-qq", "-o", str(trace),
                str(bpftop_otel()), *args, "--endpoint", rotel.grpc_url, "--count", "6",
            ],
            capture_output=True, text=True, timeout=120, env=cli_env(), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        rotel.wait_points(lambda pts: any(p.metric == "bpf.program.runs" for p in pts), 20, "runs")
    text = trace.read_text(errors="replace")
    used = set(re.findall(r"^\d+\s+([a-z0-9_]+)\(", text, re.MULTILINE))
    assert {"bpf", "connect", "openat"} <= used, "strace saw too little to judge"
    disallowed = used - allowed_syscalls(analyze)
    assert not disallowed, f"SystemCallFilter would refuse {sorted(disallowed)}"
    families = set(re.findall(r"\bsocket\((AF_[A-Z0-9]+)", text))
    allowed_families = set(directive("RestrictAddressFamilies").split())
    assert families, "no socket() traced"
    assert families <= allowed_families, f"RestrictAddressFamilies refuses {families}"


def setpriv_command(user: int, caps: list[str]) -> list[str]:
    """Run as ``user`` with exactly ``caps``, as systemd does for DynamicUser + ambient caps."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not installed (Debian package util-linux)")
    listed = ",".join(["-all", *(f"+{c}" for c in caps)])
    return [
        setpriv,
        f"--reuid={user}",
        f"--regid={user}",
        "--clear-groups",
        f"--bounding-set={listed}",
        f"--inh-caps={listed}",
        f"--ambient-caps={listed}",
        "--no-new-privs",
        "--",
    ]


NOBODY = 65534


def unprivileged_user() -> int:
    """nobody, when it can run this venv's Python; else root (capabilities still limited).

    A checkout under a directory only root can enter (such as /root) is out of nobody's
    reach; the capability set is then checked for uid 0, as the DaemonSet runs it.
    """
    probe = subprocess.run(
        [*setpriv_command(NOBODY, []), sys.executable, "-c", "import otel_bpf"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return NOBODY if probe.returncode == 0 else 0


def run_json(user: int, caps: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            *setpriv_command(user, caps),
            str(bpftop_otel()), "--json", "--owners", "--count", "2", "--interval", "0.5",
            "--exporter", "none",
        ],
        capture_output=True, text=True, timeout=90, env=cli_env(), stdin=subprocess.DEVNULL,
        cwd="/",
    )  # fmt: skip


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_unit_capabilities_are_enough_and_sys_admin_is_needed() -> None:
    from otel_bpf.demo import DemoWorkload

    caps = unit_capabilities()
    user = unprivileged_user()
    with DemoWorkload() as demo:
        demo_ids = set(demo.program_ids.values())
        full = run_json(user, caps)
        assert full.returncode == 0, f"uid {user} caps {caps}:\n{full.stderr[-3000:]}"
        rows = [json.loads(line) for line in full.stdout.splitlines() if line]
        seen = {row["id"]: row for row in rows if row["id"] in demo_ids}
        assert set(seen) == demo_ids, f"uid {user} caps {caps} saw {sorted(seen)}"
        assert all(row["owners"] for row in seen.values()), "no owners with the unit's capabilities"

        without_admin = run_json(user, [c for c in caps if c != "sys_admin"])
        assert without_admin.returncode == 77, without_admin.stderr[-3000:]

        # Without the two capabilities for reading other processes' /proc/<pid>/fd, owner
        # lookup may come back empty, but sampling goes on.
        less = run_json(user, [c for c in caps if c not in ("sys_ptrace", "dac_read_search")])
        assert less.returncode == 0, less.stderr[-3000:]
        rows = [json.loads(line) for line in less.stdout.splitlines() if line]
        assert {r["id"] for r in rows} >= demo_ids
