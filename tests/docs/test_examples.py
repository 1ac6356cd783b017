"""Every Python and shell example in README.md and docs/ runs as printed, or says why not.

Python blocks run against the real kernel with this interpreter; shell blocks run in bash
(``-e -o pipefail``) with this interpreter's ``bin`` first on ``PATH``, which is what the
README's first command leaves behind (the venv activated). Both run from the root of the
source tree, each in its own process group, bounded in time; whatever a block leaves running
is killed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from markdown_blocks import PYTHON, ROOT, SHELL, CodeBlock, all_examples, code_blocks
from peers import Rotel

TIMEOUT = {PYTHON: 90.0, SHELL: 90.0}
"""Seconds one example may take; the longest printed ones take about 15."""

EXAMPLES = all_examples()
# An example printed twice (the README's and the Deployment page's) runs once.
RUN = list({(b.kind, b.text): b for b in reversed(EXAMPLES) if b.not_run is None}.values())[::-1]


def test_every_example_runs_or_says_why_not() -> None:
    # Every Python/shell block is collected (a parse error would surface here), and the ones
    # left out carry a reason; the rest are the parameters of the tests below.
    assert EXAMPLES, "no examples found in README.md and docs/"
    for block in EXAMPLES:
        assert block.not_run is None or block.not_run, f"{block.where}: empty not-run reason"
    assert {b.kind for b in RUN} == {PYTHON, SHELL}


def test_not_run_marker_needs_a_block_and_a_reason(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- not-run: waits for a key -->\n```sh\nbpftop-otel --live\n```\n")
    (block,) = code_blocks(page)
    assert block.not_run == "waits for a key"
    page.write_text("<!-- not-run: -->\n```sh\ntrue\n```\n")
    with pytest.raises(ValueError, match="without a reason"):
        code_blocks(page)
    page.write_text("<!-- not-run: moved -->\n\ntext\n```sh\ntrue\n```\n")
    with pytest.raises(ValueError, match="not followed by a code block"):
        code_blocks(page)


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rotel]:
    """A collector for the examples that export over OTLP to OTEL_EXPORTER_OTLP_ENDPOINT."""
    with Rotel(tmp_path_factory.mktemp("rotel")) as rotel:
        yield rotel


def run_block(block: CodeBlock, env: dict[str, str], tmp_path: Path) -> None:
    if block.kind == PYTHON:
        script = tmp_path / "example.py"
        script.write_text(block.text)
        argv = [sys.executable, str(script)]
    else:
        script = tmp_path / "example.sh"
        script.write_text(block.text)
        argv = ["bash", "-e", "-o", "pipefail", str(script)]
    assert block.kind is not None
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=TIMEOUT[block.kind])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"{block.where} did not end within {TIMEOUT[block.kind]:g} s:\n{tail(out)}")
    finally:
        # Whatever the example started in the background and left behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, f"{block.where} exited {proc.returncode}:\n{tail(out)}"


def tail(out: bytes, lines: int = 40) -> str:
    return "\n".join(out.decode(errors="replace").splitlines()[-lines:])


@pytest.mark.kernel
@pytest.mark.parametrize("block", RUN, ids=[b.where for b in RUN])
def test_example_runs_as_printed(block: CodeBlock, collector: Rotel, tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = sys.prefix
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # The Python examples that build an OTLPMetricExporter() send where the standard
    # variable says, as they would for a user with a collector at localhost:4317.
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.grpc_url
    for name in ("OTEL_METRICS_EXPORTER", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        env.pop(name, None)
    run_block(block, env, tmp_path)
