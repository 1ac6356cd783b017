"""The iterator sampling path against the syscall path, on the real kernel.

Both paths must give the same records (id, type, name, run_cnt, run_time_ns,
recursion_misses) while programs load and unload between passes and traffic runs on both
CPUs.  Other processes' programs may be running during a comparison, so counters are compared
for programs whose two syscall readings around the iterator reading are equal; our own
programs carry no traffic during the comparison, so all of them must be compared.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, replace

import pytest
from kernel_progs import PASS_ALL, load_btf_named, load_named, prog_id_of_fd

from otel_bpf.kernel.iterator.progs import PROGRAM_NAME
from otel_bpf.kernel.iterator.selfcheck import (
    IteratorUnavailableError,
    compare,
)
from otel_bpf.kernel.iterator.source import IteratorSource
from otel_bpf.kernel.loader import attach_socket_filter, program_info
from otel_bpf.kernel.open_source import open_source
from otel_bpf.kernel.programs import read_all
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.kernel.stats import stats_enabled
from otel_bpf.kernel.system import possible_cpus
from otel_bpf.records import ProgramRecord
from otel_bpf.sampler import Sampler

pytestmark = pytest.mark.kernel

FIELDS = ("id", "type", "type_id", "name", "run_cnt", "run_time_ns", "recursion_misses")
CPUS = sorted(os.sched_getaffinity(0))


@dataclass
class Filter:
    fd: int
    id: int
    name: str
    receiver: socket.socket


def _load_filter(name: str, btf_name: bool) -> Filter:
    fd = load_btf_named(name) if btf_name else load_named(name)
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    attach_socket_filter(receiver, fd)
    return Filter(fd, prog_id_of_fd(fd), name, receiver)


def _unload(f: Filter) -> None:
    f.receiver.close()
    os.close(f.fd)


def _send_from_cpu(cpu: int, targets: list[tuple[Filter, int]]) -> None:
    """Send from a thread pinned to ``cpu``: loopback delivery runs the filter on that CPU."""

    def run() -> None:
        os.sched_setaffinity(0, {cpu})  # 0 = this thread
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for f, count in targets:
                addr = f.receiver.getsockname()
                for i in range(count):
                    sender.sendto(b"%d" % i, addr)
        finally:
            sender.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()


def _drain(f: Filter, count: int) -> None:
    f.receiver.settimeout(5)
    for _ in range(count):
        f.receiver.recv(64)


def _loaded_ids() -> set[int]:
    return {r.id for r in read_all(SourceOptions(memlock=False)).records}


def _view(r: ProgramRecord) -> tuple[object, ...]:
    return tuple(getattr(r, name) for name in FIELDS)


def _compare_paths(source: IteratorSource, ours: dict[int, Filter]) -> None:
    """Iterator and syscall records agree; every one of ``ours`` is compared exactly."""
    for _attempt in range(5):
        before = {r.id: r for r in read_all(SourceOptions(memlock=False)).records}
        raw = source.read_raw()
        merged = {r.id: r for r in source.read().records}
        after = {r.id: r for r in read_all(SourceOptions(memlock=False)).records}
        problems = compare(
            list(before.values()),
            raw,
            list(merged.values()),
            list(after.values()),
            ignore=source.self_ids,
        )
        assert problems == []
        # Our programs: present exactly when loaded, all fields equal to the syscall path's.
        ours_seen = {i for i in merged if i in ours}
        assert ours_seen == set(ours)
        if all(_view(before[i]) == _view(after[i]) for i in ours):
            for i in ours:
                assert _view(merged[i]) == _view(before[i])
                assert merged[i].tag == before[i].tag
                assert merged[i].xlated_size == before[i].xlated_size
                assert merged[i].verified_insns == before[i].verified_insns
            return
    pytest.fail("our idle programs' counters kept moving between two syscall readings")


@pytest.fixture
def stats() -> Iterator[None]:
    with stats_enabled():
        yield


@pytest.mark.parametrize("rdonly_cast", [True, False], ids=["rdonly_cast", "probe_read"])
def test_both_paths_agree_across_random_workloads(stats: None, rdonly_cast: bool) -> None:
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    loaded: dict[int, Filter] = {}
    sent: dict[int, int] = {}
    with IteratorSource(use_rdonly_cast=rdonly_cast) as source, ExitStack() as stack:
        stack.callback(lambda: [_unload(f) for f in loaded.values()])
        assert source.variant == ("rdonly_cast" if rdonly_cast else "probe_read")
        for round_no in range(4):
            # Unload some, load some (long BTF names on some of them).
            for prog_id in rng.sample(sorted(loaded), k=len(loaded) // 3):
                _unload(loaded.pop(prog_id))
            for k in range(rng.randint(3, 8)):
                name = f"otel_t_iter_{round_no}_{k}" + ("_with_a_long_name" * (k % 2))
                f = _load_filter(name, btf_name=bool(k % 2))
                loaded[f.id] = f
                sent[f.id] = 0
            # Traffic from every CPU we may run on, to random filters.
            for cpu in CPUS:
                targets = [(f, rng.randint(0, 40)) for f in loaded.values()]
                _send_from_cpu(cpu, targets)
                for f, count in targets:
                    _drain(f, count)
                    sent[f.id] += count
            # No traffic to ours now: the run counts are exactly what was sent.
            records = {r.id: r for r in source.read().records}
            for prog_id in loaded:
                assert records[prog_id].run_cnt == sent[prog_id]
            _compare_paths(source, loaded)


def test_own_programs_are_left_out_unless_asked() -> None:
    with IteratorSource(SourceOptions(owners=True)) as source:
        default = {r.id for r in source.read().records}
        own = source.self_ids
        assert len(own) == 2  # the bpf_prog and task_file iterators
        assert not own & default
        everything = {
            r.id: r for r in source.read(replace(source.options, include_self=True)).records
        }
        assert own <= everything.keys()
        names = {everything[i].name for i in own}
        assert names == {PROGRAM_NAME, "otel_bpf_owners"}
        # The syscall path sees them: they are real programs, just not the user's.
        assert own <= {r.id for r in read_all(SourceOptions(memlock=False)).records}


def test_everything_is_released_on_close() -> None:
    source = IteratorSource(SourceOptions(owners=True))
    source.read()
    ids = source.self_ids
    source.close()
    source.close()  # idempotent
    # A link releases its program from a workqueue after the last close, so the ids may
    # linger for a moment.
    deadline = time.monotonic() + 10
    while ids & _loaded_ids():
        assert time.monotonic() < deadline, f"still loaded: {ids & _loaded_ids()}"
        time.sleep(0.02)
    with pytest.raises(OSError, match="closed"):
        source.read()


def test_failure_while_loading_releases_what_was_created() -> None:
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError):
        # An offset past the end of bpf_prog_aux: the verifier rejects the program after
        # both maps were created.
        IteratorSource(layout_overrides={"aux_name": 1 << 14})
    # No fd left behind (the garbage collector may close unrelated ones meanwhile).
    assert set(os.listdir("/proc/self/fd")) <= before


def test_sums_exactly_the_baked_cpu_list(stats: None) -> None:
    if len(CPUS) < 2:
        pytest.skip("needs two CPUs")
    f = _load_filter("otel_t_cpus", btf_name=False)
    try:
        _send_from_cpu(CPUS[1], [(f, 25)])
        _drain(f, 25)
        _send_from_cpu(CPUS[0], [(f, 7)])
        _drain(f, 7)
        assert program_info(f.fd).run_cnt == 32
        counts = {}
        for cpus in ([CPUS[0]], [CPUS[1]], possible_cpus()):
            with IteratorSource(cpus=cpus) as source:
                counts[tuple(cpus)] = next(r for r in source.read_raw() if r.id == f.id).run_cnt
        assert counts[(CPUS[0],)] == 7
        assert counts[(CPUS[1],)] == 25
        assert counts[tuple(possible_cpus())] == 32
    finally:
        _unload(f)


def test_open_source_syscall_by_option(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="otel_bpf"), open_source("syscall") as source:
        assert source.path == "syscall"
        assert not isinstance(source, IteratorSource)
        assert isinstance(source.read().records, list)
    lines = [r.getMessage() for r in caplog.records if "sampling path" in r.getMessage()]
    assert len(lines) == 1 and "option" in lines[0]


def test_open_source_auto_uses_the_iterator_and_plugs_into_the_sampler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="otel_bpf"):
        source = open_source("auto")
    assert source.path == "iterator", caplog.text
    assert isinstance(source, IteratorSource)
    with source:
        f = load_named("otel_t_sampler", PASS_ALL)
        try:
            snapshot = Sampler(source=source).sample_once()
            assert snapshot.sampling_path == "iterator"
            assert snapshot.get(prog_id_of_fd(f)) is not None
            assert not source.self_ids & {p.program.id for p in snapshot.programs}
        finally:
            os.close(f)


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        ({"aux_id": 36}, "disagrees with the syscall path"),  # loads, reads the wrong field
        ({"aux_name": 1 << 14}, "verifier rejected"),  # rejected at load
    ],
    ids=["wrong-ids", "load-failure"],
)
def test_auto_falls_back_with_one_log_line(
    caplog: pytest.LogCaptureFixture, overrides: dict[str, int], why: str
) -> None:
    with caplog.at_level(logging.INFO, logger="otel_bpf"):
        source = open_source("auto", layout_overrides=overrides)
    assert source.path == "syscall"
    assert not isinstance(source, IteratorSource)
    fd = load_named("otel_t_fallback")
    try:
        assert prog_id_of_fd(fd) in {r.id for r in source.read().records}
    finally:
        os.close(fd)
    lines = [r for r in caplog.records if "sampling path" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    assert why in lines[0].getMessage()


def test_iterator_mode_raises_instead_of_falling_back() -> None:
    with pytest.raises(IteratorUnavailableError, match="disagrees with the syscall path"):
        open_source("iterator", layout_overrides={"aux_id": 36})
    source = open_source("iterator")
    assert source.path == "iterator"
    assert isinstance(source, IteratorSource)
    source.close()


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="auto, iterator, syscall"):
        open_source("fast")  # type: ignore[arg-type]
