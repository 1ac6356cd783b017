"""The demo programs' runs as the Prometheus endpoint serves them, for tests that stall an
output and check that sampling and exports go on."""

from __future__ import annotations

import re
import time
import urllib.request


def demo_runs(port: int) -> float:
    """The summed ``bpf_program_runs`` of the demo programs, as scraped."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read(8 << 20).decode()
    values = re.findall(r"^bpf_program_runs\S*otel_demo_\S*\} (\S+)$", text, re.M)
    return sum(float(v) for v in values)


def assert_demo_runs_grow(port: int, step: float, readings: int = 4) -> None:
    """Over ``readings`` scrapes ``step`` seconds apart the demo's runs never go back and
    end higher than they started."""
    seen = []
    for _ in range(readings):
        seen.append(demo_runs(port))
        time.sleep(step)
    assert seen == sorted(seen) and seen[-1] > seen[0], f"counters frozen: {seen}"
