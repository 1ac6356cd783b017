"""The kernel-boundary parsers, fed random and damaged input: each returns a value or raises
its documented error type, never anything else.

- fdinfo text and bytes, ``/proc/<pid>/comm`` text, fd link targets: always a value.
- ``prog_info_from_bytes`` + ``record_from_info`` with bytes of any length (shorter: an
  older kernel; longer: a newer one) and any claimed ``info_len``: always a record.
- ``btf.Btf`` with random, truncated or bit-flipped blobs: a value or ``BtfFormatError``;
  lookups on a parsed blob: a value, ``KeyError`` (unknown id) or ``BtfFormatError``.
- ``VmlinuxBtf`` on a truncated or corrupted copy of /sys/kernel/btf/vmlinux: a value or
  ``VmlinuxBtfError``.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_bpf.kernel import btf, fdinfo, owners
from otel_bpf.kernel.programs import prog_info_from_bytes, record_from_info
from otel_bpf.kernel.vmlinux_btf import VMLINUX_BTF_PATH, VmlinuxBtf, VmlinuxBtfError
from otel_bpf.records import ProgramRecord

FDINFO = (
    "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2072\nprog_type:\t1\nprog_jited:\t1\n"
    "prog_tag:\t1b1a8a2c6d8a7b3e\nmemlock:\t4096\nprog_id:\t42\nrun_time_ns:\t10\n"
)
FDINFO_BYTES = FDINFO.encode()


def mutated(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` truncated, extended, or with bytes overwritten."""
    cut = st.integers(0, len(base)).map(lambda n: base[:n])
    grown = st.binary(max_size=64).map(lambda extra: base + extra)
    flipped = st.lists(
        st.tuples(st.integers(0, max(len(base) - 1, 0)), st.integers(0, 255)), max_size=8
    ).map(lambda edits: _apply(base, edits))
    return st.one_of(cut, grown, flipped, st.binary(max_size=len(base) + 64))


def _apply(base: bytes, edits: list[tuple[int, int]]) -> bytes:
    data = bytearray(base)
    for pos, value in edits:
        if pos < len(data):
            data[pos] = value
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), mutated(FDINFO_BYTES).map(lambda b: b.decode("utf-8", "replace"))))
def test_fdinfo_text(text: str) -> None:
    fields = fdinfo.parse_fdinfo(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    for key in ("memlock", "prog_id", "map_id", "pos", *list(fields)[:3]):
        value = fdinfo.int_field(fields, key)
        assert value is None or isinstance(value, int)


@settings(max_examples=300, deadline=None)
@given(mutated(FDINFO_BYTES))
def test_fdinfo_memlock_bytes(data: bytes) -> None:
    value = fdinfo.memlock_from_fdinfo(data)
    assert value is None or isinstance(value, int)


@settings(max_examples=200, deadline=None)
@given(st.text(), st.text())
def test_comm_and_fd_targets(comm: str, target: str) -> None:
    parsed = owners.parse_comm(comm)
    assert isinstance(parsed, str) and len(parsed) <= len(comm)
    assert owners.via_of_fd_target(target) in (None, "prog", "link")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.one_of(st.none(), st.integers(0, 4096)))
def test_prog_info_of_any_length(data: bytes, claimed_len: int | None) -> None:
    info, size = prog_info_from_bytes(data)
    assert 0 <= size <= len(data)
    record = record_from_info(info, size if claimed_len is None else claimed_len, boot_offset=0.0)
    assert isinstance(record, ProgramRecord)
    assert isinstance(record.name, str) and isinstance(record.type, str)
    assert record.run_time_ns >= 0 and record.run_cnt >= 0
    assert math.isfinite(record.load_time)


FUNC_BTF = btf.build_func_btf("otel_fuzz_function_with_a_long_name")


@settings(max_examples=400, deadline=None)
@given(mutated(FUNC_BTF), st.integers(-2, 8), st.integers(0, 1 << 20))
def test_btf_blob(data: bytes, type_id: int, offset: int) -> None:
    try:
        parsed = btf.Btf(data)
    except btf.BtfFormatError:
        return
    assert parsed.func_name(type_id) is None or isinstance(parsed.func_name(type_id), str)
    for lookup in (lambda: parsed.name(type_id), lambda: parsed.kind(type_id),
                   lambda: parsed.string(offset)):  # fmt: skip
        with contextlib.suppress(KeyError, btf.BtfFormatError):
            lookup()


def test_btf_blob_intact_still_parses() -> None:
    """The fuzzed base is a good blob: the checks above are not all rejections."""
    assert btf.Btf(FUNC_BTF).func_name(btf.BUILT_FUNC_TYPE_ID) == (
        "otel_fuzz_function_with_a_long_name"
    )


VMLINUX = Path(VMLINUX_BTF_PATH)


def use_vmlinux(path: str) -> None:
    with VmlinuxBtf(path) as v:
        for call in (
            lambda: v.struct_size("task_struct"),
            lambda: v.member_offset("task_struct", "pid"),
            lambda: v.member("bpf_prog_aux", "id"),
            lambda: v.func_id("bpf_iter_bpf_prog"),
            lambda: v.has_func("bpf_prog_get_info_by_fd"),
            lambda: v.prefetch(["task_struct", "file", "bpf_prog"]),
        ):
            with contextlib.suppress(VmlinuxBtfError):
                call()


@pytest.mark.skipif(not os.access(VMLINUX, os.R_OK), reason="no readable vmlinux BTF")
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
@given(st.data())
def test_vmlinux_btf_corrupted_copy(data: st.DataObject) -> None:
    original = VMLINUX.read_bytes()
    how = data.draw(st.sampled_from(["truncate", "flip", "header"]))
    blob = bytearray(original)
    if how == "truncate":
        blob = blob[: data.draw(st.integers(0, len(original)))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 64))):
            pos = data.draw(st.integers(0, len(blob) - 1))
            blob[pos] = data.draw(st.integers(0, 255))
    else:  # the header and the first type records
        for _ in range(data.draw(st.integers(1, 8))):
            pos = data.draw(st.integers(0, 63))
            blob[pos] = data.draw(st.integers(0, 255))
    with tempfile.NamedTemporaryFile(prefix="vmlinux-", suffix=".btf") as f:
        f.write(bytes(blob))
        f.flush()
        with contextlib.suppress(VmlinuxBtfError):
            use_vmlinux(f.name)
