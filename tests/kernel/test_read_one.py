"""``programs.read_one``: one program by id, the same record a full syscall pass makes."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from kernel_progs import load_btf_named, load_named, pass_all_with_map, prog_id_of_fd

from otel_bpf.kernel._uapi import MapType
from otel_bpf.kernel.errors import BpfNotFoundError
from otel_bpf.kernel.maps import create_map
from otel_bpf.kernel.programs import read_all, read_one
from otel_bpf.kernel.system import boot_time_offset

pytestmark = pytest.mark.kernel


def test_read_one_equals_the_pass_record() -> None:
    map_fd = create_map(MapType.ARRAY, 4, 8, 1, "otel_t_one_map")
    fds = [
        load_named("otel_t_one"),
        load_btf_named("otel_t_one_with_a_long_btf_name"),
        load_named("otel_t_one_map", pass_all_with_map(map_fd)),
    ]
    try:
        ids = [prog_id_of_fd(fd) for fd in fds]
        by_id = {r.id: r for r in read_all().records}
        boot = boot_time_offset()
        for prog_id in ids:
            one = read_one(prog_id, boot_offset=boot)
            # Idle programs: every field equal, memlock too; the load time is the same up to
            # the boot offset each reading takes from two clocks.
            assert one.load_time == pytest.approx(by_id[prog_id].load_time, abs=1e-3)
            assert one == replace(by_id[prog_id], load_time=one.load_time)
            assert read_one(prog_id).load_time == pytest.approx(one.load_time, abs=1e-3)
            assert read_one(prog_id, memlock=False).memlock_bytes is None
        assert read_one(ids[1]).name == "otel_t_one_with_a_long_btf_name"
        assert len(read_one(ids[2]).map_ids) == 1
    finally:
        for fd in fds:
            os.close(fd)
        os.close(map_fd)


def test_read_one_of_an_unloaded_program_raises_not_found() -> None:
    fd = load_named("otel_t_one_gone")
    prog_id = prog_id_of_fd(fd)
    os.close(fd)
    with pytest.raises(BpfNotFoundError):
        # The program is freed from an RCU callback: give it a moment.
        for _ in range(1000):
            read_one(prog_id)
            os.sched_yield()
