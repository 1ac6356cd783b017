"""The collector stops for 20 s and comes back, twice (20 s, then 3 s).

While it is down sampling goes on, resident size stays bounded and exactly one WARNING is
logged for the burst; when it is back, exports resume (data points stamped after the
restart) with one "resumed" line.  The second, short outage gets its own pair of lines.
tests/e2e/test_rotel.py covers a collector that is absent from the start and memory with
nobody listening; this covers a collector that was working and went away.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from peers import Cli, Rotel, cli_env, wait_until
from process_probe import rss_kib

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(200)]

OUTAGE_S = 20.0
"""About 40 failed exports (one every 0.5 s, each refused at once or ended by its 1 s
timeout): a queue of unsent points would grow with each."""
SHORT_OUTAGE_S = 3.0
WARM_UP_S = 6.0
"""Seconds into the long outage from which resident size is compared: the first failed
exports have run the error paths once (a headless run keeps only a few snapshots, so no
history fills up meanwhile)."""
PROBE_S = 2.0


def test_collector_down_for_a_minute_and_back(tmp_path: Path) -> None:
    rotel = Rotel(tmp_path / "rotel").start()
    args = ["--demo", "--json", "--interval", "0.1", "--export-interval", "0.5",
            "--endpoint", rotel.grpc_url, "--name", "otel_demo_*"]  # fmt: skip
    cli = Cli(tmp_path, args, cli_env(OTEL_EXPORTER_OTLP_TIMEOUT="1")).start()
    try:

        def lines(word: str) -> list[str]:
            return [x for x in cli.stderr().splitlines() if word in x and "export to" in x]

        def points_since(ns: int) -> bool:
            return any(p.metric == "bpf.program.runs" and p.time_ns >= ns for p in rotel.points())

        start_ns = time.time_ns()
        assert wait_until(lambda: points_since(start_ns), 30), cli.describe()

        rss: list[tuple[float, int]] = []
        seqs: list[int] = []
        for outage, (failed, resumed) in ((OUTAGE_S, (1, 1)), (SHORT_OUTAGE_S, (2, 2))):
            rotel.stop()
            down = time.monotonic()
            assert wait_until(lambda n=failed: len(lines(" WARNING ")) >= n, 15), cli.describe()
            while time.monotonic() - down < outage:
                assert cli.proc is not None and cli.proc.poll() is None, cli.describe()
                time.sleep(min(PROBE_S, outage))
                seqs.append(max(o["seq"] for o in cli.json_objects()))
                if outage == OUTAGE_S:
                    rss.append((time.monotonic() - down, rss_kib(cli.pid)))
            assert len(lines(" WARNING ")) == failed, cli.describe()

            back_ns = time.time_ns()
            rotel = Rotel(rotel.workdir, grpc_port=rotel.grpc_port, http_port=rotel.http_port)
            rotel.start()
            assert wait_until(lambda ns=back_ns: points_since(ns), 30), (
                f"export did not resume\n{cli.describe()}"
            )
            assert wait_until(lambda n=resumed: len(lines("resumed")) >= n, 10), cli.describe()
            assert len(lines(" WARNING ")) == failed, cli.describe()
        cli.signal(signal.SIGTERM)
        assert cli.wait(30) == 0, cli.describe()
    finally:
        cli.stop()
        rotel.stop()

    # Sampling went on during the outages: at 0.1 s, 2 s apart is about 20 passes.
    steps = [b - a for a, b in zip(seqs, seqs[1:], strict=False)]
    assert min(steps) >= 8, f"sampling stalled: passes every {PROBE_S:g} s {steps}"
    # From the end of the warm-up to the end of the outage, resident size grows < 10 %.
    print(f"outage {OUTAGE_S:g} s: (seconds into it, RSS KiB) every {PROBE_S:g} s: {rss}")
    warm = [kib for t, kib in rss if t >= WARM_UP_S]
    assert len(warm) >= 6 and max(warm) < warm[0] * 1.10, rss
    err = cli.stderr()
    assert "Traceback" not in err
    assert len(lines("resumed")) == 2, err
