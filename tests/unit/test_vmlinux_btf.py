"""vmlinux BTF look-ups: a hand-built blob with anonymous members, and the host's own BTF
checked against bpftool's dump of it."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from otel_bpf.kernel.btf import BTF_MAGIC
from otel_bpf.kernel.vmlinux_btf import (
    KIND_FUNC,
    KIND_STRUCT,
    VMLINUX_BTF_PATH,
    VmlinuxBtf,
    VmlinuxBtfError,
)

T = struct.Struct("<III")


def build_blob(pad_types: int = 0) -> bytes:
    """Types, numbered after ``pad_types`` INT padding types: INT int; an anonymous UNION
    {int b; int c}; STRUCT outer {int a at bit 0; the union at bit 64; int z:3 at bit 96};
    FUNC_PROTO; FUNC my_func; FWD outer (same name, another kind); STRUCT after {int q at
    bit 32}."""
    strings = b"\0int\0b\0c\0outer\0a\0z\0my_func\0after\0q\0pad\0"

    def s(name: str) -> int:
        return strings.index(b"\0" + name.encode() + b"\0") + 1

    types = b""
    for _ in range(pad_types):
        types += T.pack(s("pad"), 1 << 24, 4) + struct.pack("<I", 32)
    base = pad_types
    int_id = base + 1
    types += T.pack(s("int"), 1 << 24, 4) + struct.pack("<I", (1 << 24) | 32)
    anon_id = base + 2
    types += T.pack(0, (5 << 24) | 2, 4)
    types += struct.pack("<III", s("b"), int_id, 0) + struct.pack("<III", s("c"), int_id, 0)
    # STRUCT outer: id base + 3
    # kind_flag set: member offsets carry bitfield size << 24 | bit offset.
    types += T.pack(s("outer"), (1 << 31) | (4 << 24) | 3, 16)
    types += struct.pack("<III", s("a"), int_id, 0)
    types += struct.pack("<III", 0, anon_id, 64)
    types += struct.pack("<III", s("z"), int_id, (3 << 24) | 96)
    proto_id = base + 4
    types += T.pack(0, (13 << 24) | 1, int_id) + struct.pack("<II", 0, int_id)
    types += T.pack(s("my_func"), 12 << 24, proto_id)  # id base + 5
    types += T.pack(s("outer"), 7 << 24, 0)  # FWD outer, id base + 6
    types += T.pack(s("after"), (4 << 24) | 1, 8)  # id base + 7
    types += struct.pack("<III", s("q"), int_id, 32)
    header = struct.pack("<HBBIIIII", BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


@pytest.fixture(params=[0, 3000], ids=["small", "past-anchors"])
def blob(tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, int]:
    path = tmp_path / "vmlinux"
    path.write_bytes(build_blob(request.param))
    return path, request.param


def test_ids_offsets_and_anonymous_members(blob: tuple[Path, int]) -> None:
    path, base = blob
    with VmlinuxBtf(str(path)) as btf:
        assert btf.func_id("my_func") == base + 5
        assert btf.struct_id("outer") == base + 3
        assert btf.type_id("outer", 7) == base + 6
        assert btf.struct_id("after") == base + 7
        # After the walk went past them, earlier ids resolve through anchors.
        assert btf.struct_id("outer") == base + 3
        assert btf.member_offset("outer", "a") == 0
        assert btf.member_offset("outer", "b") == 8  # inside the anonymous union
        assert btf.member_offset("outer", "c") == 8
        z = btf.member("outer", "z")
        assert (z.offset, z.bitfield) == (12, True)
        assert btf.member_offset("after", "q") == 4
        assert btf.struct_size("outer") == 16
        assert btf.has_func("my_func")
        assert not btf.has_func("outer")


def test_missing_names_raise(blob: tuple[Path, int]) -> None:
    path, _ = blob
    with VmlinuxBtf(str(path)) as btf:
        with pytest.raises(VmlinuxBtfError, match="no FUNC 'nope'"):
            btf.func_id("nope")
        with pytest.raises(VmlinuxBtfError, match="no member 'nope'"):
            btf.member_offset("outer", "nope")
        with pytest.raises(VmlinuxBtfError, match="no member 'q'"):
            btf.member_offset("outer", "q")  # a name that exists elsewhere
        # a name that is a suffix of another string is not a match
        with pytest.raises(VmlinuxBtfError):
            btf.struct_id("ter")


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(VmlinuxBtfError, match="cannot open"):
        VmlinuxBtf(str(tmp_path / "absent"))
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(VmlinuxBtfError, match="magic"):
        VmlinuxBtf(str(bad))


needs_host_btf = pytest.mark.skipif(
    not os.access(VMLINUX_BTF_PATH, os.R_OK) or shutil.which("bpftool") is None,
    reason="needs /sys/kernel/btf/vmlinux and bpftool",
)


@needs_host_btf
def test_host_btf_matches_bpftool() -> None:
    dump = subprocess.run(
        ["bpftool", "btf", "dump", "file", VMLINUX_BTF_PATH, "format", "raw"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    wanted = {
        ("FUNC", "bpf_iter_bpf_prog"),
        ("FUNC", "bpf_iter_task_file"),
        ("STRUCT", "bpf_prog_stats"),
        ("STRUCT", "bpf_prog"),
        ("STRUCT", "task_struct"),
    }
    expected: dict[tuple[str, str], int] = {}
    for m in re.finditer(r"^\[(\d+)\] (FUNC|STRUCT) '([^']+)'", dump, re.M):
        key = (m.group(2), m.group(3))
        if key in wanted and key not in expected:
            expected[key] = int(m.group(1))
    assert expected.keys() == wanted
    members = re.search(r"STRUCT 'bpf_prog_stats' size=(\d+) vlen=\d+\n((?:\t.*\n)+)", dump)
    assert members is not None
    stats_offsets = {
        m.group(1): int(m.group(2)) // 8
        for m in re.finditer(r"'(\w+)' type_id=\d+ bits_offset=(\d+)", members.group(2))
    }
    with VmlinuxBtf() as btf:
        for (kind, name), type_id in expected.items():
            assert btf.type_id(name, KIND_FUNC if kind == "FUNC" else KIND_STRUCT) == type_id
        for name, offset in stats_offsets.items():
            assert btf.member_offset("bpf_prog_stats", name) == offset
        assert btf.struct_size("bpf_prog_stats") == int(members.group(1))
        # In anonymous unions: iterator contexts and struct bpf_array's tail.
        assert btf.member_offset("bpf_iter__bpf_prog", "prog") == 8
        assert btf.member_offset("bpf_array", "pptrs") > 0


def test_prefetched_names_come_from_one_walk(tmp_path: Path) -> None:
    path = tmp_path / "vmlinux"
    path.write_bytes(build_blob(5000))
    with VmlinuxBtf(str(path)) as btf:
        btf.prefetch(["after", "my_func", "outer", "absent"])
        assert btf.struct_id("after") == 5007
        walked = btf._next_id
        # Both were met on the way to "after": no further walking, no second pass.
        assert btf.func_id("my_func") == 5005
        assert btf.struct_id("outer") == 5003
        assert btf._next_id == walked
        assert not btf.has_func("absent")


def test_enum_values(tmp_path: Path) -> None:
    strings = b"\0int\0colour\0RED\0GREEN\0INVALID\0big\0HUGE\0NEG\0"

    def s(name: str) -> int:
        return strings.index(b"\0" + name.encode() + b"\0") + 1

    types = T.pack(s("int"), 1 << 24, 4) + struct.pack("<I", (1 << 24) | 32)
    # ENUM colour, signed (kind_flag): INVALID = -1, RED = 0, GREEN = 7.
    types += T.pack(s("colour"), (1 << 31) | (6 << 24) | 3, 4)
    types += struct.pack("<Ii", s("INVALID"), -1) + struct.pack("<Ii", s("RED"), 0)
    types += struct.pack("<Ii", s("GREEN"), 7)
    # ENUM64 big, unsigned: HUGE = 2**40 + 5; signed would make NEG negative, not here.
    types += T.pack(s("big"), (19 << 24) | 2, 8)
    types += struct.pack("<III", s("HUGE"), 5, 1 << 8)
    types += struct.pack("<III", s("NEG"), 0xFFFFFFFF, 0xFFFFFFFF)
    header = struct.pack("<HBBIIIII", BTF_MAGIC, 1, 0, 24, 0, len(types), len(types), len(strings))
    path = tmp_path / "vmlinux"
    path.write_bytes(header + types + strings)
    with VmlinuxBtf(str(path)) as btf:
        assert btf.enum_values("colour") == {"INVALID": -1, "RED": 0, "GREEN": 7}
        assert btf.enum_values("big") == {"HUGE": (1 << 40) + 5, "NEG": (1 << 64) - 1}
        with pytest.raises(VmlinuxBtfError, match="no enum 'int'"):
            btf.enum_values("int")


def test_host_cgroup_attach_type_enum() -> None:
    # The slots of struct cgroup_bpf's arrays, as the iter/cgroup program reads them.
    with VmlinuxBtf() as btf:
        values = btf.enum_values("cgroup_bpf_attach_type")
    assert values["CGROUP_INET_INGRESS"] == 0
    assert values["CGROUP_BPF_ATTACH_TYPE_INVALID"] == -1
    assert values["CGROUP_LSM_START"] < values["CGROUP_LSM_END"]
    assert values["MAX_CGROUP_BPF_ATTACH_TYPE"] == values["CGROUP_LSM_END"] + 1
