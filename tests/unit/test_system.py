"""Host facts: CPU lists, the boot-time offset for load times."""

from __future__ import annotations

import os
import time

import pytest

from otel_bpf.kernel import system


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0\n", [0]),
        ("0-3\n", [0, 1, 2, 3]),
        ("0-1,4,6-7\n", [0, 1, 4, 6, 7]),
        ("", []),
    ],
)
def test_parse_cpu_list(text: str, cpus: list[int]) -> None:
    assert system.parse_cpu_list(text) == cpus


def test_cpu_counts_on_this_host() -> None:
    online = system.online_cpus()
    assert 1 <= online <= len(system.possible_cpus())
    assert online >= len(os.sched_getaffinity(0))  # affinity may be narrower than online


def test_boot_offset_turns_boottime_into_wall_clock() -> None:
    now_boot_ns = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    assert abs(system.boottime_to_wall(now_boot_ns) - time.time()) < 0.5
    assert system.boottime_to_wall(0, offset=100.0) == 100.0


def test_names() -> None:
    assert system.kernel_release() == os.uname().release
    assert system.hostname()
