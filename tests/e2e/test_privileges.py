"""Without CAP_BPF/CAP_SYS_ADMIN, ``bpftop-otel`` says what is missing and exits 77.

The command runs under ``setpriv`` as root with every capability dropped (bounding,
inheritable and ambient sets empty, so the exec gets none).  Running it as ``nobody``
would also test file permissions of the interpreter, which pyenv builds under /root
do not grant.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from peers import cli_command, cli_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

DROP_ALL = ["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]


def test_without_privileges_names_what_is_missing() -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv not installed (Debian package util-linux)")
    caps = subprocess.run(
        [setpriv, *DROP_ALL, "--", "grep", "^CapEff:", "/proc/self/status"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    assert int(caps.stdout.split()[1], 16) == 0, caps.stdout
    proc = subprocess.run(
        [setpriv, *DROP_ALL, "--", *cli_command(), "--count", "1", "--exporter", "none"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(HOME="/"),
        stdin=subprocess.DEVNULL,
        cwd="/",
        check=False,
    )
    assert proc.returncode == 77, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("bpftop-otel: error:")]
    assert len(errors) == 1, proc.stderr
    assert "CAP_SYS_ADMIN" in errors[0] and "CAP_BPF" in errors[0]
    assert "permission denied" in errors[0]
    assert proc.stdout == ""
