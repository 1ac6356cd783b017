"""Ten minutes at a 0.1 s interval with the demo workload, owner lookup and an OTLP export:
resident size and the open fd count stay flat.

Only in ``tox -e soak`` (marker ``soak``, excluded from the default run).  The duration can
be shortened for a trial with ``OTEL_BPF_SOAK_SECONDS``.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from peers import Rotel, cli_command, cli_env, tail
from process_probe import fd_count, rss_kib

from otel_bpf import read_programs
from otel_bpf.kernel.source import SourceOptions

pytestmark = [pytest.mark.soak, pytest.mark.slow, pytest.mark.timeout(900)]

DURATION = float(os.environ.get("OTEL_BPF_SOAK_SECONDS", "600"))
WARM_UP = min(60.0, DURATION / 5)
"""Imports, the sampler's history (120 x 0.1 s), owner caches and the SDK's first
aggregations are in place by then; growth is measured from the end of the warm-up."""
PROBE_EVERY = 15.0


def programs() -> int:
    """Programs loaded on the host now: a burst of other programs is a burst of work."""
    return len(read_programs(SourceOptions(memlock=False)))


def rss_baseline(samples: list[tuple[float, int, int, int]]) -> int:
    """Resident size to compare the end with.

    Other software on the host may load thousands of programs for a while; one pass over
    them sets the allocator's high-water mark, which stays (freed memory is reused, not
    returned).  So the baseline is the first reading after the largest program count was
    last seen, when at least a third of the run is left after it; otherwise the highest
    reading while that count was loaded.
    """
    peak = max(s[3] for s in samples)
    last_peak = max(i for i, s in enumerate(samples) if s[3] == peak)
    if last_peak + 1 < len(samples) and samples[last_peak + 1][0] <= samples[-1][0] * 2 / 3:
        return samples[last_peak + 1][1]
    return max(s[1] for s in samples if s[3] == peak)


def test_soak_rss_and_fds_stay_flat(tmp_path: Path) -> None:
    with Rotel(tmp_path / "rotel") as rotel:
        err = tmp_path / "bpftop-otel.err"
        with open(err, "wb") as err_file:
            proc = subprocess.Popen(
                [
                    *cli_command(), "--demo", "--owners", "--interval", "0.1",
                    "--export-interval", "5", "--endpoint", rotel.grpc_url,
                ],
                stdout=subprocess.DEVNULL, stderr=err_file, stdin=subprocess.DEVNULL,
                env=cli_env(),
            )  # fmt: skip
        samples: list[tuple[float, int, int, int]] = []
        try:
            started = time.monotonic()
            while (elapsed := time.monotonic() - started) < DURATION:
                assert proc.poll() is None, f"bpftop-otel exited early:\n{tail(err)}"
                samples.append((elapsed, rss_kib(proc.pid), fd_count(proc.pid), programs()))
                time.sleep(PROBE_EVERY)
            end = time.monotonic() - started
            samples.append((end, rss_kib(proc.pid), fd_count(proc.pid), programs()))
            proc.terminate()
            assert proc.wait(30) == 0, tail(err)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        received = rotel.points()
    table = "\n".join(
        f"{t:7.1f} s  rss {r:7d} KiB  fds {f:3d}  programs on the host {n:5d}"
        for t, r, f, n in samples
    )
    print(f"soak over {DURATION:g} s:\n{table}")
    (tmp_path / "soak.txt").write_text(table)
    assert any(p.metric == "bpf.program.runs" for p in received), tail(rotel.out)
    after_warm_up = [s for s in samples if s[0] >= WARM_UP]
    base_rss = rss_baseline(after_warm_up)
    end_rss = max(s[1] for s in after_warm_up[-3:])
    assert end_rss <= base_rss * 1.10, f"RSS grew {base_rss} -> {end_rss} KiB\n{table}"
    fds = [s[2] for s in after_warm_up]
    assert max(fds) - min(fds) <= 4, f"open fds moved\n{table}"
    assert fds[-1] <= fds[0] + 1, f"open fds grew\n{table}"
    assert "Traceback" not in err.read_text(errors="replace")
