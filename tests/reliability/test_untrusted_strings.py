"""Names a process chooses (its ``comm``, its executable's file name) with control and
escape sequences, invalid UTF-8 and maximum lengths, next to programs with 15-character
kernel names and long BTF names, through the JSON output and the OTel attributes.

The holders are a copy of ``sleep`` whose file name is the hostile text (so ``comm`` and
the executable name both carry it) and a Python child that renames itself through
``/proc/self/comm``.  The live view with a hostile ``comm`` runs in tmux in
tests/e2e/test_live_tmux.py::test_hostile_process_name_is_shown_escaped; here the live view
also gets an executable name that is not UTF-8 and a 199-character program name.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from kernel_progs import load_btf_named, load_named, prog_id_of_fd
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from peers import cli_command, cli_env
from tmux_pane import Pane

from otel_bpf import BpfMetricsPlugin, MetricsOptions
from otel_bpf.otel import names

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

EXE_NAME = b"\x1b]0;pwn\x07\xff\xfe\x1b[2J\x9bzz-evil-name-longer-than-comm"
"""OSC title, BEL, bytes that are not UTF-8, clear screen, a C1 CSI; 15 bytes reach comm."""
COMM = b"\x1b[31m\xc3(\x07\x9b\xe2\x82x\x08abc"[:15]
"""Set through /proc/self/comm: escape, an invalid UTF-8 sequence, BEL, backspace."""
SHORT_NAME = "otel_rel_u15chr"  # 15 characters: the kernel's limit
LONG_NAME = "otel_rel_untrusted_" + "n" * 180  # kept whole through BTF func_info

RENAMER = """
import sys
with open("/proc/self/comm", "wb") as f:
    f.write(bytes.fromhex(sys.argv[1]))
print("ready", flush=True)
sys.stdin.read()
"""


@dataclass
class Holders:
    ids: dict[str, int]
    sleeper: int
    renamed: int


@pytest.fixture
def holders(tmp_path: Path) -> Iterator[Holders]:
    fds = [load_named(SHORT_NAME), load_btf_named(LONG_NAME)]
    exe = os.path.join(os.fsencode(tmp_path), EXE_NAME)
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(subprocess.Popen([exe, "120"], pass_fds=fds))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RENAMER, COMM.hex()],
                pass_fds=fds,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )  # fmt: skip
        )
        assert procs[1].stdout is not None and procs[1].stdout.readline() == b"ready\n"
        assert Path(f"/proc/{procs[0].pid}/comm").read_bytes() == EXE_NAME[:15] + b"\n"
        assert Path(f"/proc/{procs[1].pid}/comm").read_bytes() == COMM + b"\n"
        yield Holders(
            ids={SHORT_NAME: prog_id_of_fd(fds[0]), LONG_NAME: prog_id_of_fd(fds[1])},
            sleeper=procs[0].pid,
            renamed=procs[1].pid,
        )
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
        for fd in fds:
            os.close(fd)


def strict_utf8(text: str) -> bool:
    """Encodable as UTF-8: no lone surrogates (which strict JSON parsers and protobuf refuse)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def no_controls(text: str) -> bool:
    return not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text)


@pytest.mark.e2e
def test_json_output_is_plain_ascii_and_valid(holders: Holders) -> None:
    proc = subprocess.run(
        [*cli_command(), "--json", "--owners", "--count", "2",
         "--interval", "0.3", "--exporter", "none", "--name", "otel_rel_u*"],
        capture_output=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
        env=cli_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    raw = proc.stdout
    assert all(0x20 <= b < 0x7F or b == 0x0A for b in raw), "raw control or non-ASCII bytes"
    rows = [json.loads(line) for line in raw.decode("ascii").splitlines()]
    by_name = {r["name"]: r for r in rows if r["id"] in holders.ids.values()}
    assert set(by_name) == {SHORT_NAME, LONG_NAME}, sorted(by_name)
    for row in by_name.values():
        comms = {o["pid"]: o["comm"] for o in row["owners"]}
        assert {holders.sleeper, holders.renamed} <= set(comms), row["owners"]
        for comm in comms.values():
            assert strict_utf8(comm), f"lone surrogate in {comm!r}"
        assert "pwn" in comms[holders.sleeper] and "ab" in comms[holders.renamed]
    # The same text through a strict round trip: what a Go or Rust consumer would parse.
    for line in raw.decode("ascii").splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard {c}"))


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_live_view_detail_shows_them_escaped(holders: Holders, tmp_path: Path) -> None:
    pane = Pane([*cli_command(), "--live", "--owners", "--interval", "0.5"], tmp_path)
    try:
        pane.wait_for("rows ", 30)
        title = pane.tmux("display", "-p", "-t", "live", "#{pane_title}")
        pane.tmux("send-keys", "-t", "live", "f")
        pane.tmux("send-keys", "-t", "live", "-l", "otel_rel_untrusted")
        pane.tmux("send-keys", "-t", "live", "Enter", "Home", "Enter")
        text = pane.wait_for("Owners:", 10)
        assert f"({holders.sleeper})" in text and f"({holders.renamed})" in text, text
        assert "pwn" in text  # shown, as text: the title sequence was not obeyed
        assert pane.tmux("display", "-p", "-t", "live", "#{pane_title}") == title
        pane.tmux("send-keys", "-t", "live", "q")
        assert pane.exit_status() == 0, pane.capture()
        assert pane.flags() == "0 1"
        assert "Traceback" not in pane.capture()
    finally:
        pane.kill()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_otel_owner_attributes_encode_for_otlp(holders: Holders) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    options = MetricsOptions(names=("otel_rel_u*",), owner_series=True)
    try:
        with anyio.fail_after(60):
            async with BpfMetricsPlugin(provider, interval=0.2, options=options) as plugin:
                # Counters only: the collection reads the programs and their owners.
                assert plugin.samples_on_collection
                data = reader.get_metrics_data()
    finally:
        provider.shutdown()
    assert data is not None
    owner_points = [
        dict(p.attributes or {})
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == names.PROGRAM_OWNER.name
        for p in m.data.data_points
    ]
    ours = [
        a for a in owner_points if a.get(names.PROCESS_PID) in (holders.sleeper, holders.renamed)
    ]
    assert len(ours) == 4, owner_points  # two programs x two holders
    for attrs in ours:
        value = str(attrs[names.PROCESS_EXECUTABLE_NAME])
        assert strict_utf8(value), f"lone surrogate in {value!r}"
    program_names = {a.get(names.PROGRAM_NAME) for a in ours}
    assert program_names == {SHORT_NAME, LONG_NAME}
    # What the OTLP exporters send: the protobuf encoding of the whole batch.
    assert encode_metrics(data).SerializeToString()
