"""BTF: the built blob parses back, malformed blobs raise a clean error."""

from __future__ import annotations

import struct

import pytest

from otel_bpf.kernel.btf import (
    BUILT_FUNC_TYPE_ID,
    KIND_FUNC,
    KIND_FUNC_PROTO,
    KIND_INT,
    KIND_STRUCT,
    KIND_VAR,
    Btf,
    BtfFormatError,
    build_func_btf,
    func_info_records,
    type_record_size,
)

NAME = "otel_test_a_very_long_program_name"


def test_built_blob_parses_back() -> None:
    btf = Btf(build_func_btf(NAME))
    assert len(btf) == 3
    assert [btf.kind(i) for i in (1, 2, 3)] == [KIND_INT, KIND_FUNC_PROTO, KIND_FUNC]
    assert btf.name(1) == "int"
    assert btf.name(2) == ""
    assert btf.func_name(BUILT_FUNC_TYPE_ID) == NAME


def test_func_name_of_non_func_or_missing_type() -> None:
    btf = Btf(build_func_btf(NAME))
    assert btf.func_name(1) is None
    assert btf.func_name(0) is None
    assert btf.func_name(99) is None


def test_header_fields() -> None:
    blob = build_func_btf("f")
    magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        "<HBBIIIII", blob
    )
    assert (magic, version, flags, hdr_len, type_off) == (0xEB9F, 1, 0, 24, 0)
    assert hdr_len + str_off + str_len == len(blob)
    assert blob[hdr_len + str_off] == 0  # the string section starts with ""


def test_func_info_records() -> None:
    assert func_info_records((0, 3), (8, 4)) == struct.pack("<IIII", 0, 3, 8, 4)


@pytest.mark.parametrize("cut", [0, 10, 23, 30, 40, 60])
def test_truncated_blob_raises(cut: int) -> None:
    with pytest.raises(BtfFormatError):
        Btf(build_func_btf(NAME)[:cut])


def test_bad_magic_and_version() -> None:
    blob = bytearray(build_func_btf(NAME))
    bad = bytes(blob[:0]) + b"\x00\x00" + bytes(blob[2:])
    with pytest.raises(BtfFormatError, match="magic"):
        Btf(bad)
    blob[2] = 9
    with pytest.raises(BtfFormatError, match="version"):
        Btf(bytes(blob))


def test_unknown_kind_and_bad_string_offset() -> None:
    blob = bytearray(build_func_btf(NAME))
    struct.pack_into("<I", blob, 24 + 4, 31 << 24)  # type 1's info: kind 31
    with pytest.raises(BtfFormatError, match="kind"):
        Btf(bytes(blob))
    blob = bytearray(build_func_btf(NAME))
    struct.pack_into("<I", blob, 24 + 12 + 4 + 12, 10_000)  # FUNC's name_off
    with pytest.raises(BtfFormatError, match="outside"):
        Btf(bytes(blob)).name(BUILT_FUNC_TYPE_ID)
    # func_name, used to name programs, falls back instead (to the kernel's short name).
    assert Btf(bytes(blob)).func_name(BUILT_FUNC_TYPE_ID) is None


def test_unterminated_string() -> None:
    blob = build_func_btf(NAME)
    with pytest.raises(BtfFormatError):
        # drop the final NUL but keep the header's str_len: sections run past the end
        Btf(blob[:-1])


def info_word(kind: int, vlen: int = 0) -> int:
    return kind << 24 | vlen


def test_type_record_size_by_kind() -> None:
    assert type_record_size(info_word(KIND_INT)) == 12 + 4  # btf_type + the int's u32
    assert type_record_size(info_word(KIND_STRUCT, vlen=3)) == 12 + 3 * 12  # 3 btf_member
    assert type_record_size(info_word(KIND_FUNC_PROTO, vlen=2)) == 12 + 2 * 8  # 2 btf_param
    assert type_record_size(info_word(KIND_VAR)) == 12 + 4
    assert type_record_size(info_word(KIND_FUNC, vlen=1)) == 12  # vlen is the linkage here
