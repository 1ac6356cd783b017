"""Each capability dropped on its own, and a user without any: a clear message and exit status.

Runs as root with one capability removed from every set (``setpriv``), so exactly that
capability is missing.  On the kernel, CAP_SYS_ADMIN also passes the checks for CAP_BPF
and CAP_PERFMON (``bpf_capable()``, ``perfmon_capable()``), so dropping only one of those
changes nothing; without CAP_SYS_ADMIN nothing can be listed (exit 77); the demo needs
CAP_NET_ADMIN (exit 1 with one line); owner lookup degrades without CAP_SYS_PTRACE or
CAP_DAC_READ_SEARCH.  The documented minimal set (the systemd unit's) is run as ``nobody``
in tests/e2e/test_systemd_unit.py; tests/e2e/test_privileges.py drops every capability.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest
from kernel_progs import load_named, prog_id_of_fd
from peers import cli_command, cli_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(240)]

NOBODY = 65534
BASE = ["--json", "--count", "2", "--interval", "0.2", "--exporter", "none"]

CASES = [
    # (dropped capability, extra flags, exit status, words in the one error line)
    ("sys_admin", [], 77, ["CAP_SYS_ADMIN", "permission denied"]),
    ("sys_admin", ["--demo"], 77, ["CAP_SYS_ADMIN"]),
    ("bpf", ["--owners"], 0, []),
    ("perfmon", ["--sampling-path", "iterator"], 0, []),
    ("net_admin", [], 0, []),
    ("net_admin", ["--demo"], 1, ["demo workload", "not permitted"]),
    ("sys_ptrace", ["--owners"], 0, []),
    ("dac_read_search", ["--owners"], 0, []),
]


@pytest.fixture(scope="module")
def our_program() -> Iterator[int]:
    """One program loaded while the module runs, so a successful run has a row to show."""
    fd = load_named("otel_rel_caps")
    try:
        yield prog_id_of_fd(fd)
    finally:
        os.close(fd)


def setpriv() -> str:
    path = shutil.which("setpriv")
    if path is None:
        pytest.skip("setpriv not installed (Debian package util-linux)")
    return path


def run(prefix: list[str], flags: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *cli_command(), *BASE, *flags],
        capture_output=True, text=True, timeout=90, env=cli_env(HOME="/"),
        stdin=subprocess.DEVNULL, cwd="/", check=False,
    )  # fmt: skip


def check(
    proc: subprocess.CompletedProcess[str], status: int, words: list[str], prog_id: int
) -> None:
    assert proc.returncode == status, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [x for x in proc.stderr.splitlines() if x.startswith("bpftop-otel: error:")]
    if status == 0:
        assert not errors, proc.stderr
        rows = [json.loads(line) for line in proc.stdout.splitlines() if line]
        assert prog_id in {row["id"] for row in rows}, "our program is not reported"
    else:
        assert len(errors) == 1, proc.stderr
        assert all(w in errors[0] for w in words), errors[0]
        assert proc.stdout == ""


IDS = [f"no-{c}{'-' + f[0].strip('-') if f else ''}" for c, f, _, _ in CASES]


@pytest.mark.parametrize(("cap", "flags", "status", "words"), CASES, ids=IDS)
def test_one_capability_dropped(
    our_program: int, cap: str, flags: list[str], status: int, words: list[str]
) -> None:
    prefix = [setpriv(), f"--inh-caps=-{cap}", "--ambient-caps=-all", f"--bounding-set=-{cap}",
              "--"]  # fmt: skip
    check(run(prefix, flags), status, words, our_program)


@pytest.mark.parametrize(
    ("caps", "status"), [([], 77), (["bpf", "perfmon"], 77), (["sys_admin"], 0)],
    ids=["nobody-no-caps", "nobody-bpf-perfmon", "nobody-sys-admin"],
)  # fmt: skip
def test_non_root_user(our_program: int, caps: list[str], status: int) -> None:
    probe = subprocess.run(
        [setpriv(), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
         sys.executable, "-c", "import otel_bpf"],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    # A checkout only root can enter is out of nobody's reach: uid 0 with the same
    # capabilities is then the closest run (as tests/e2e/test_systemd_unit.py does).
    user = NOBODY if probe.returncode == 0 else 0
    listed = ",".join(["-all", *(f"+{c}" for c in caps)])
    prefix = [setpriv(), f"--reuid={user}", f"--regid={user}", "--clear-groups",
              f"--bounding-set={listed}", f"--inh-caps={listed}", f"--ambient-caps={listed}",
              "--no-new-privs", "--"]  # fmt: skip
    check(run(prefix, []), status, ["CAP_SYS_ADMIN"] if status else [], our_program)
