"""Parsing captured ``bpf_prog_info`` bytes into records, no privileges needed."""

from __future__ import annotations

import ctypes

import pytest

from otel_bpf.kernel._uapi import MapInfo, ProgInfo
from otel_bpf.kernel.maps import record_from_map_info
from otel_bpf.kernel.prog_types import map_type_name, prog_type_name
from otel_bpf.kernel.programs import prog_info_from_bytes, record_from_info

# bpf_prog_info of a socket filter "otel_capture" using one array map, captured on Linux 6.18
# after three packets with stats on (pointer fields zeroed before the dump).
CAPTURED = bytes.fromhex(
    "01000000740000000bd0168676c7c7791e0000002000000000000000000000000000000000000000"
    "f934065269010000000000000100000000000000000000006f74656c5f6361707475726500000000"
    "00000000010000000000000000000000000000000000000001000000010000000000000000000000"
    "00000000000000000000000008000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000001000000008000000010000000000000000000000aa00000000000000"
    "0300000000000000000000000000000003000000000000000000000000000000"
)
BOOT = 1_700_000_000.0


def test_struct_size_matches_the_kernel() -> None:
    # Linux 6.0+ struct bpf_prog_info is 232 bytes (aligned(8)); the capture is one.
    assert ctypes.sizeof(ProgInfo) == 232 == len(CAPTURED)


def test_full_capture() -> None:
    info, info_len = prog_info_from_bytes(CAPTURED)
    rec = record_from_info(info, info_len, boot_offset=BOOT, map_ids=(25,), memlock=4096)
    assert rec.id == 116
    assert rec.type == "socket_filter" and rec.type_id == 1
    assert rec.name == "otel_capture"
    assert rec.tag == "0bd0168676c7c779"
    assert (rec.run_cnt, rec.run_time_ns) == (3, 170)
    assert rec.recursion_misses == 0
    assert rec.verified_insns == 3
    assert (rec.xlated_size, rec.jited_size) == (32, 30)
    assert rec.load_time == pytest.approx(BOOT + 1551.859332345)
    assert rec.uid == 0 and rec.btf_id == 0
    assert rec.map_ids == (25,) and rec.memlock_bytes == 4096
    assert rec.owners is None and rec.maps is None


def test_name_override_from_btf() -> None:
    info, info_len = prog_info_from_bytes(CAPTURED)
    rec = record_from_info(info, info_len, boot_offset=BOOT, name="otel_capture_full_name")
    assert rec.name == "otel_capture_full_name"


@pytest.mark.parametrize(
    ("length", "run_stats", "recursion", "verified"),
    [
        (ProgInfo.run_time_ns.offset, False, False, False),  # before 5.1
        (ProgInfo.recursion_misses.offset, True, False, False),  # 5.1 .. 5.11
        (ProgInfo.verified_insns.offset, True, True, False),  # 5.12 .. 5.15
        (ProgInfo.attach_btf_obj_id.offset, True, True, True),  # 5.16 .. 5.19
    ],
)
def test_truncated_info_from_older_kernels(
    length: int, run_stats: bool, recursion: bool, verified: bool
) -> None:
    info, info_len = prog_info_from_bytes(CAPTURED[:length])
    assert info_len == length
    rec = record_from_info(info, info_len, boot_offset=BOOT)
    assert rec.id == 116 and rec.name == "otel_capture" and rec.tag == "0bd0168676c7c779"
    assert rec.run_cnt == (3 if run_stats else 0)
    assert rec.run_time_ns == (170 if run_stats else 0)
    assert (rec.recursion_misses is not None) is recursion
    assert (rec.verified_insns is not None) is verified


def test_longer_input_than_struct_is_cut() -> None:
    info, info_len = prog_info_from_bytes(CAPTURED + b"\0" * 16)
    assert info_len == 232 and info.id == 116


def test_unnamed_program_has_empty_name() -> None:
    data = bytearray(CAPTURED)
    off = ProgInfo.name.offset
    data[off : off + 16] = b"\0" * 16
    info, info_len = prog_info_from_bytes(bytes(data))
    assert record_from_info(info, info_len, boot_offset=BOOT).name == ""


def test_fifteen_character_name_uses_all_bytes() -> None:
    data = bytearray(CAPTURED)
    off = ProgInfo.name.offset
    data[off : off + 16] = b"abcdefghijklmno\0"
    info, _ = prog_info_from_bytes(bytes(data))
    assert record_from_info(info, 232, boot_offset=BOOT).name == "abcdefghijklmno"


def test_type_names_as_bpftool_prints_them() -> None:
    assert [prog_type_name(i) for i in (1, 3, 6, 8, 26, 32)] == [
        "socket_filter",
        "sched_cls",
        "xdp",
        "cgroup_skb",
        "tracing",
        "netfilter",
    ]
    assert prog_type_name(999) == "type_999"
    assert [map_type_name(i) for i in (1, 2, 6, 27, 33)] == [
        "hash",
        "array",
        "percpu_array",
        "ringbuf",
        "arena",
    ]
    assert map_type_name(77) == "type_77"


def test_map_info_record() -> None:
    info = MapInfo(type=2, id=25, key_size=4, value_size=8, max_entries=1)
    info.name = b"otel_cap_map"
    rec = record_from_map_info(info, 320)
    assert (rec.id, rec.type, rec.name, rec.key_size, rec.value_size) == (
        25,
        "array",
        "otel_cap_map",
        4,
        8,
    )
    assert rec.max_entries == 1 and rec.memlock_bytes == 320
