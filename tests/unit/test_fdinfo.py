"""fdinfo text of BPF program, link and map fds, as Linux 6.18 prints it."""

from __future__ import annotations

from otel_bpf.kernel.fdinfo import (
    int_field,
    memlock_from_fdinfo,
    parse_fdinfo,
    prog_id_from_fdinfo,
)
from otel_bpf.kernel.owners import parse_comm, via_of_fd_target

PROG = (
    "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\nprog_type:\t1\nprog_jited:\t1\n"
    "prog_tag:\t0bd0168676c7c779\nmemlock:\t4096\nprog_id:\t116\nrun_time_ns:\t170\n"
    "run_cnt:\t3\nrecursion_misses:\t0\nverified_insns:\t3\n"
)
LINK = (
    "pos:\t0\nflags:\t02000000\nmnt_id:\t17\nino:\t1038\nlink_type:\txdp\nlink_id:\t95\n"
    "prog_tag:\t614b434cd8324ecc\nprog_id:\t117\nifindex:\t1\n"
)
MAP = (
    "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\nmap_type:\t2\nkey_size:\t4\n"
    "value_size:\t8\nmax_entries:\t1\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t320\n"
    "map_id:\t25\nfrozen:\t0\n"
)


def test_prog_fdinfo() -> None:
    fields = parse_fdinfo(PROG)
    assert fields["prog_tag"] == "0bd0168676c7c779"
    assert int_field(fields, "run_cnt") == 3
    assert prog_id_from_fdinfo(PROG) == 116
    assert memlock_from_fdinfo(PROG.encode()) == 4096


def test_link_fdinfo_names_its_program() -> None:
    assert parse_fdinfo(LINK)["link_type"] == "xdp"
    assert prog_id_from_fdinfo(LINK) == 117
    assert memlock_from_fdinfo(LINK.encode()) is None


def test_map_fdinfo() -> None:
    fields = parse_fdinfo(MAP)
    assert int_field(fields, "map_id") == 25
    assert int_field(fields, "map_flags") == 0
    assert memlock_from_fdinfo(MAP.encode()) == 320
    assert prog_id_from_fdinfo(MAP) is None


def test_malformed_lines() -> None:
    text = "garbage line\n:\t5\nprog_id:\tnot-a-number\nmemlock:\t\n\nkey only:\n"
    fields = parse_fdinfo(text)
    assert "garbage line" not in fields and "" not in fields
    assert fields["key only"] == ""
    assert prog_id_from_fdinfo(text) is None
    assert memlock_from_fdinfo(b"memlock:\tlots\n") is None
    assert memlock_from_fdinfo(b"memlock:\t8192") == 8192  # no trailing newline
    assert prog_id_from_fdinfo("") is None


def test_fd_targets_and_comm() -> None:
    assert via_of_fd_target("anon_inode:bpf-prog") == "prog"
    assert via_of_fd_target("anon_inode:bpf_link") == "link"
    assert via_of_fd_target("anon_inode:bpf-map") is None
    assert via_of_fd_target("anon_inode:bpf-stats") is None
    assert parse_comm("python3\n") == "python3"
    assert parse_comm("a b\n\n") == "a b\n"
