"""run_cnt of a socket filter grows by exactly the number of packets sent."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator

import pytest

import otel_bpf
from otel_bpf.demo import DemoWorkload
from otel_bpf.demo import programs as demo
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.loader import attach_socket_filter, load_program, program_id, program_info
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.kernel.stats import stats_enabled
from otel_bpf.kernel.syscall import close

pytestmark = pytest.mark.kernel


@pytest.fixture(autouse=True)
def _stats_on() -> Iterator[None]:
    with stats_enabled():
        yield


def run_cnt_by_id(prog_id: int) -> int:
    for rec in otel_bpf.read_programs(SourceOptions(memlock=False)):
        if rec.id == prog_id:
            return rec.run_cnt
    raise AssertionError(f"program {prog_id} is not loaded")


def settle(read: Callable[[], int], target: int, timeout: float = 5.0) -> int:
    """Poll ``read`` until it reaches ``target`` (loopback delivery runs in softirq, which
    a busy machine may defer a little); never wait past ``timeout``."""
    deadline = time.monotonic() + timeout
    value = read()
    while value < target and time.monotonic() < deadline:
        time.sleep(0.02)
        value = read()
    return value


def test_socket_filter_counts_exactly_the_datagrams_sent() -> None:
    fd = load_program(ProgType.SOCKET_FILTER, demo.return_const(demo.SK_DROP), "otel_test_count")
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        prog_id = program_id(fd)
        rx.bind(("127.0.0.1", 0))
        attach_socket_filter(rx, fd)
        dest = rx.getsockname()
        assert run_cnt_by_id(prog_id) == 0
        expected = 0
        for batch in (500, 137, 1):
            for _ in range(batch):
                tx.sendto(b"x", dest)
            expected += batch
            # The enumeration path (GET_FD_BY_ID + OBJ_GET_INFO_BY_FD) and the program's
            # own fd must both show exactly the packets sent, no more.
            assert settle(lambda: run_cnt_by_id(prog_id), expected) == expected
            assert program_info(fd).run_cnt == expected
        time.sleep(0.2)
        assert run_cnt_by_id(prog_id) == expected
    finally:
        rx.close()
        tx.close()
        close(fd)


def test_demo_programs_count_exactly_what_the_workload_sent() -> None:
    """Each demo program sees its own traffic only: after a pause, run_cnt == sent."""
    rates = {demo.SOCK: 300.0, demo.XDP: 200.0, demo.CGROUP_SKB: 150.0, demo.SLOW: 100.0}
    with DemoWorkload(rates) as w:
        time.sleep(1.0)
        for _ in range(2):
            sent = w.pause()
            assert all(n > 0 for n in sent.values()), sent
            for name, prog_id in w.program_ids.items():
                got = settle(lambda pid=prog_id: run_cnt_by_id(pid), sent[name])
                assert got == sent[name], f"{name}: run_cnt {got}, packets sent {sent[name]}"
            w.set_rates(rates)
            time.sleep(0.7)
