"""Stats stay on for as long as an exporter is reading, however slow its collector.

Two runs of the real command with hundreds of programs loaded, the kernel's stats fd of the
``bpftop-otel`` process watched every 0.2 s:

* a collector that accepts connections and never answers, with about 1,000 programs (six
  OTLP batches per export): one export, all its batches included, ends within the OTLP
  timeout, the first WARNING comes within one export interval plus that timeout, and the
  stats fd never goes away (the idle rule counts an export in progress as reading);
* a healthy collector at the minimum intervals (0.1 s sampling and export) with 1,000
  programs: no off/on flapping.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kernel_progs import many_loaded
from peers import Cli, Rotel, SilentCollector, cli_env, stats_fd_count, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def watch_stats(
    cli: Cli, seconds: float, also: Callable[[], object] = lambda: None
) -> tuple[int, int]:
    """(samples with the stats fd, samples without it) every 0.2 s for ``seconds``; ``also``
    runs at each sample."""
    held = missing = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cli.proc is not None and cli.proc.poll() is None, cli.describe()
        if stats_fd_count(cli.pid):
            held += 1
        else:
            missing += 1
        also()
        time.sleep(0.2)
    return held, missing


def first_pass_at(cli: Cli) -> bool:
    return "first pass:" in cli.stderr()


def test_a_silent_collector_never_switches_stats_off(tmp_path: Path) -> None:
    prefix = f"hs{os.getpid() % 10000}_"
    export_interval, timeout = 2.0, 2.0
    with SilentCollector(max_connections=16, lifetime=90) as silent, many_loaded(1000, prefix):
        args = ["--endpoint", silent.url, "--export-interval", f"{export_interval:g}",
                "--name", f"{prefix}*"]  # fmt: skip
        cli = Cli(tmp_path, args, cli_env(OTEL_EXPORTER_OTLP_TIMEOUT=f"{timeout:g}")).start()
        try:
            assert wait_until(lambda: first_pass_at(cli), 30), cli.describe()
            started = time.monotonic()
            warned_after: list[float] = []

            def warned() -> bool:
                if " WARNING " in cli.stderr() and not warned_after:
                    warned_after.append(time.monotonic() - started)
                return bool(warned_after)

            held, missing = watch_stats(cli, 4 * (export_interval + timeout), warned)
            assert wait_until(warned, 1), cli.describe()
        finally:
            cli.stop()
    err = cli.stderr()
    print(f"silent collector: stats fd held {held}, missing {missing} of {held + missing} "
          f"samples; first WARNING {warned_after[0]:.1f} s after the first pass")  # fmt: skip
    assert missing == 0, f"stats fd missing in {missing} of {held + missing} samples\n{err}"
    assert "no metrics collection" not in err, err
    assert warned_after[0] <= export_interval + timeout + 1.5, err
    # One WARNING for the whole outage, however many batches and exports failed (and one
    # for the final export at exit).
    assert len(re.findall(r" WARNING (?!.*final export).*export to", err)) == 1, err


def test_a_healthy_collector_at_the_minimum_intervals_does_not_flap(tmp_path: Path) -> None:
    prefix = f"hf{os.getpid() % 10000}_"
    rotel = Rotel(tmp_path / "rotel").start()
    try:
        with many_loaded(1000, prefix):
            args = ["--endpoint", rotel.grpc_url, "--interval", "0.1", "--export-interval",
                    "0.1", "--name", f"{prefix}*"]  # fmt: skip
            cli = Cli(tmp_path, args, cli_env()).start()
            try:
                assert wait_until(lambda: first_pass_at(cli), 30), cli.describe()
                held, missing = watch_stats(cli, 10)
            finally:
                cli.stop()
    finally:
        rotel.stop()
    err = cli.stderr()
    print(f"minimum intervals: stats fd held {held}, missing {missing} of {held + missing}")
    assert missing == 0, f"stats fd missing in {missing} of {held + missing} samples\n{err}"
    assert "no metrics collection" not in err, err
