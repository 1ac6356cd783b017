"""A process holding a program through both a program fd and a BPF link fd is one owner.

libbpf-based loaders keep the program fd of every program they attach with a link, so this
is the common case for XDP, tc and cgroup programs.  Both sampling paths must name such a
process once, with both ways it holds the program in ``via``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

import pytest
from kernel_progs import HoldingChild, holding_child

from otel_bpf.cli import jsonl
from otel_bpf.kernel.open_source import open_source
from otel_bpf.kernel.source import Mode, SourceOptions
from otel_bpf.otel import names
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.otel.series import SeriesTable
from otel_bpf.records import StatsState
from otel_bpf.snapshot import build_snapshot

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]


# Loads an XDP program in a fresh network namespace, links it to that namespace's loopback
# and keeps both the program fd and the link fd (as libbpf does) until stdin closes.
BOTH_HOLDER = """
import os, sys
from otel_bpf.demo import netns
from otel_bpf.kernel import asm, links
from otel_bpf.kernel._uapi import AttachType, ProgType
from otel_bpf.kernel.loader import load_program, program_id
netns.unshare_net()
prog = asm.assemble([asm.mov64_imm(asm.R0, 2), asm.exit_()])
fd = load_program(ProgType.XDP, prog, "otel_t_via", expected_attach_type=AttachType.XDP)
link = links.link_create(fd, 1, AttachType.XDP)  # ifindex 1: lo of the new namespace
print(program_id(fd), flush=True)
sys.stdin.read()
"""


@pytest.fixture(scope="module")
def holder() -> Iterator[HoldingChild]:
    with holding_child(BOTH_HOLDER) as child:
        yield child


@pytest.mark.parametrize("path", ["syscall", "iterator"])
def test_one_owner_per_process_with_every_way_it_holds_the_program(
    holder: HoldingChild, path: Mode
) -> None:
    with open_source(path, SourceOptions(owners=True)) as source:
        assert source.path == path
        records = source.read().records
        # The iterator path must not have fallen back to the /proc scan for owners.
        assert getattr(source, "owners_path", "procfs") == (
            "iterator" if path == "iterator" else "procfs"
        )
    rec = next(r for r in records if r.id == holder.prog_id)
    assert rec.name == "otel_t_via" and rec.type == "xdp"
    assert rec.owners is not None
    # (other processes may hold it for a moment while they enumerate programs)
    mine = [o for o in rec.owners if o.pid == holder.pid]
    assert [(o.pid, o.via) for o in mine] == [(holder.pid, ("link", "prog"))]
    assert mine[0].executable == os.path.basename(os.path.realpath(sys.executable))
    assert len({o.pid for o in rec.owners}) == len(rec.owners)  # one entry per process

    # What the consumers make of it: one JSON owner, one owner series.
    snap = build_snapshot(
        None,
        [rec],
        monotonic=0.0,
        wall_time=0.0,
        online_cpus=1,
        stats=StatsState(ours=False, sysctl=False, others=False),
    )
    (line,) = jsonl.snapshot_lines(snap)
    owners = json.loads(line)["owners"]
    assert [h["via"] for h in owners if h["pid"] == holder.pid] == [["link", "prog"]]
    table = SeriesTable(MetricsOptions(owner_series=True))
    table.feed(snap)
    series = table.frame().get(names.PROGRAM_OWNER.name)
    assert [a for _, a in series if a[names.PROCESS_PID] == holder.pid] == [
        {
            names.PROGRAM_ID: holder.prog_id,
            names.PROGRAM_NAME: "otel_t_via",
            names.PROGRAM_TYPE: "xdp",
            names.PROCESS_PID: holder.pid,
            names.PROCESS_EXECUTABLE_NAME: mine[0].executable,
        }
    ]
