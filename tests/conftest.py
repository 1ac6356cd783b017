"""Test tiers and the rule that a skip is a failure in CI.

Tiers (markers): unmarked tests are pure units; ``kernel`` tests load real BPF programs and
read real kernel counters; ``e2e`` tests run the real ``bpftop-otel`` process against real
peers.  On a laptop without privileges the kernel tier skips with the reason; with
``CI`` set, every skip is turned into a failure, because CI machines have everything.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

CAP_SYS_ADMIN = 21
CAP_BPF = 39
CAP_PERFMON = 38
CAP_NET_ADMIN = 12


def effective_caps() -> int:
    """The CapEff bit mask of this process."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def kernel_privileged() -> str | None:
    """None when kernel tests can run here, else the reason they cannot."""
    caps = effective_caps()
    missing = [
        name
        for name, bit in (
            ("CAP_SYS_ADMIN", CAP_SYS_ADMIN),
            ("CAP_BPF", CAP_BPF),
            ("CAP_NET_ADMIN", CAP_NET_ADMIN),
        )
        if not caps & (1 << bit)
    ]
    if missing:
        return "kernel tests need " + ", ".join(missing) + " (run as root)"
    if not os.path.exists("/sys/kernel/btf/vmlinux"):
        return "kernel tests need BTF at /sys/kernel/btf/vmlinux"
    return None


IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = kernel_privileged()
    if reason is None:
        return
    for item in items:
        if "kernel" in item.keywords or "e2e" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped under CI=true, which counts as a failure: {reason}"
