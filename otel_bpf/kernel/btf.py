"""Raw BTF: enough parsing to name a program's function, and a minimal builder for loading.

A kernel program name is cut at 15 characters. When a program was loaded with BTF and
``func_info``, its first ``func_info`` record points at a ``BTF_KIND_FUNC`` type whose name is
the full one; bpftool prints that name, and so do we.

Layout (``include/uapi/linux/btf.h``): a 24-byte header, then the type section (each type a
12-byte ``btf_type`` followed by kind-specific data), then a NUL-separated string section that
starts with an empty string.
"""

from __future__ import annotations

import ctypes
import struct

from otel_bpf.kernel._uapi import (
    BtfInfo,
    BtfLoadAttr,
    Cmd,
    FuncInfo,
    GetIdAttr,
    InfoByFdAttr,
    ProgInfo,
)
from otel_bpf.kernel.errors import BpfError
from otel_bpf.kernel.syscall import bpf, close

BTF_MAGIC = 0xEB9F
BTF_VERSION = 1
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")

KIND_INT = 1
KIND_ARRAY = 3
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FUNC = 12
KIND_FUNC_PROTO = 13
KIND_VAR = 14
KIND_DATASEC = 15
KIND_DECL_TAG = 17
KIND_ENUM64 = 19

# Bytes that follow a btf_type of each kind: a fixed block, or one entry per vlen.
FIXED_EXTRA_BYTES = {KIND_INT: 4, KIND_ARRAY: 12, KIND_VAR: 4, KIND_DECL_TAG: 4}
PER_VLEN_EXTRA_BYTES = {
    KIND_STRUCT: 12,  # btf_member
    KIND_UNION: 12,
    KIND_ENUM: 8,  # btf_enum
    KIND_FUNC_PROTO: 8,  # btf_param
    KIND_DATASEC: 12,  # btf_var_secinfo
    KIND_ENUM64: 12,  # btf_enum64
}
_MAX_KIND = 19


class BtfFormatError(ValueError):
    """A BTF blob is truncated or malformed."""


def _kind(info: int) -> int:
    return (info >> 24) & 0x1F


def _vlen(info: int) -> int:
    return info & 0xFFFF


def type_record_size(info: int) -> int:
    """Bytes of the type record whose ``btf_type.info`` word is ``info``: the ``btf_type``
    itself and what its kind appends (kinds unknown here are taken to append nothing)."""
    kind = _kind(info)
    return (
        _TYPE.size
        + FIXED_EXTRA_BYTES.get(kind, 0)
        + PER_VLEN_EXTRA_BYTES.get(kind, 0) * _vlen(info)
    )


class Btf:
    """A parsed standalone BTF blob: type records by id and the string section."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise BtfFormatError(f"BTF blob of {len(data)} bytes is shorter than its header")
        magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(
            data
        )
        if magic != BTF_MAGIC:
            raise BtfFormatError(f"bad BTF magic {magic:#x}")
        if version != BTF_VERSION:
            raise BtfFormatError(f"unsupported BTF version {version}")
        if hdr_len < _HEADER.size or hdr_len > len(data):
            raise BtfFormatError(f"bad BTF header length {hdr_len}")
        types_start = hdr_len + type_off
        strs_start = hdr_len + str_off
        if types_start + type_len > len(data) or strs_start + str_len > len(data):
            raise BtfFormatError("BTF sections run past the end of the blob")
        self._strings = data[strs_start : strs_start + str_len]
        # _types[i] = (name_off, info, size_or_type) of type id i + 1
        self._types: list[tuple[int, int, int]] = []
        pos, end = types_start, types_start + type_len
        while pos < end:
            if pos + _TYPE.size > end:
                raise BtfFormatError("BTF type section ends inside a type record")
            name_off, info, size_or_type = _TYPE.unpack_from(data, pos)
            kind = _kind(info)
            if kind == 0 or kind > _MAX_KIND:
                raise BtfFormatError(f"unknown BTF kind {kind} at type {len(self._types) + 1}")
            pos += type_record_size(info)
            if pos > end:
                raise BtfFormatError("BTF type section ends inside a type record")
            self._types.append((name_off, info, size_or_type))

    def __len__(self) -> int:
        return len(self._types)

    def kind(self, type_id: int) -> int:
        """The ``BTF_KIND_*`` of ``type_id`` (KeyError when out of range)."""
        return _kind(self._type(type_id)[1])

    def name(self, type_id: int) -> str:
        """The name of ``type_id`` (empty for anonymous types)."""
        return self.string(self._type(type_id)[0])

    def string(self, offset: int) -> str:
        """The NUL-terminated string at ``offset`` in the string section."""
        if offset >= len(self._strings):
            raise BtfFormatError(f"string offset {offset} is outside the string section")
        end = self._strings.find(b"\0", offset)
        if end < 0:
            raise BtfFormatError(f"string at offset {offset} is not NUL-terminated")
        return self._strings[offset:end].decode(errors="replace")

    def func_name(self, type_id: int) -> str | None:
        """The name of FUNC ``type_id``; None when it is not a FUNC or its name cannot be
        read (an offset outside the string section, no NUL)."""
        try:
            if self.kind(type_id) != KIND_FUNC:
                return None
            return self.name(type_id)
        except (KeyError, BtfFormatError):
            return None

    def _type(self, type_id: int) -> tuple[int, int, int]:
        if not 1 <= type_id <= len(self._types):
            raise KeyError(type_id)
        return self._types[type_id - 1]


def build_func_btf(func_name: str) -> bytes:
    """A minimal BTF blob: ``int`` (id 1), ``int (void)`` (id 2) and FUNC ``func_name`` (id 3).

    Enough for ``BPF_PROG_LOAD`` with one ``func_info`` record ``{insn_off=0, type_id=3}``,
    which lets a program carry a name longer than the kernel's 15 characters.
    """
    strings = b"\0int\0" + func_name.encode() + b"\0"
    int_name, func_name_off = 1, 5
    types = b"".join(
        [
            # INT "int": size 4, encoding SIGNED (bit 24 of the extra word), 32 bits.
            _TYPE.pack(int_name, KIND_INT << 24, 4),
            struct.pack("<I", (1 << 24) | 32),
            # FUNC_PROTO returning int (type 1), no parameters.
            _TYPE.pack(0, KIND_FUNC_PROTO << 24, 1),
            # FUNC with static linkage (vlen 0) whose type is the proto (type 2).
            _TYPE.pack(func_name_off, KIND_FUNC << 24, 2),
        ]
    )
    header = _HEADER.pack(
        BTF_MAGIC, BTF_VERSION, 0, _HEADER.size, 0, len(types), len(types), len(strings)
    )
    return header + types + strings


BUILT_FUNC_TYPE_ID = 3
"""The FUNC type id in :func:`build_func_btf`'s blob."""


def func_info_records(*records: tuple[int, int]) -> bytes:
    """Encode ``(insn_off, type_id)`` pairs as a ``bpf_func_info`` array."""
    return b"".join(struct.pack("<II", off, tid) for off, tid in records)


def load_btf(data: bytes) -> int:
    """``BPF_BTF_LOAD`` a blob and return its fd (the caller closes it)."""
    buf = ctypes.create_string_buffer(data, len(data))
    log = ctypes.create_string_buffer(1 << 16)
    attr = BtfLoadAttr()
    attr.btf = ctypes.addressof(buf)
    attr.btf_size = len(data)
    try:
        return bpf(Cmd.BTF_LOAD, attr)
    except BpfError:
        pass
    # Again with the log on, only to explain the failure.
    attr.btf_log_buf = ctypes.addressof(log)
    attr.btf_log_size = ctypes.sizeof(log)
    attr.btf_log_level = 1
    try:
        return bpf(Cmd.BTF_LOAD, attr)
    except BpfError as err:
        text = log.value.decode(errors="replace")
        raise BpfError(err.errno, f"the kernel rejected BTF: {err.strerror}\n{text}") from None


def read_btf_data(btf_id: int) -> bytes:
    """The raw BTF blob of object ``btf_id`` (BTF_GET_FD_BY_ID + OBJ_GET_INFO_BY_FD)."""
    id_attr = GetIdAttr(start_id=btf_id)
    fd = bpf(Cmd.BTF_GET_FD_BY_ID, id_attr, f"btf {btf_id}")
    try:
        size = 4096
        while True:
            buf = ctypes.create_string_buffer(size)
            info = BtfInfo()
            info.btf = ctypes.addressof(buf)
            info.btf_size = size
            _get_info(fd, info, f"btf {btf_id}")
            if info.btf_size <= size:
                return buf.raw[: info.btf_size]
            size = info.btf_size
    finally:
        close(fd)


def first_func_type_id(prog_fd: int, func_info_rec_size: int) -> int | None:
    """The BTF type id of a program's first ``func_info`` record; None when it has none."""
    record = FuncInfo()
    info = ProgInfo()
    info.nr_func_info = 1
    info.func_info_rec_size = min(func_info_rec_size, ctypes.sizeof(FuncInfo))
    info.func_info = ctypes.addressof(record)
    _get_info(prog_fd, info, "func_info")
    if info.nr_func_info == 0:
        return None
    return int(record.type_id)


def program_btf_name(prog_fd: int, btf_id: int, func_info_rec_size: int) -> str | None:
    """The full name of a program from its BTF func_info, as bpftool resolves it."""
    type_id = first_func_type_id(prog_fd, func_info_rec_size)
    if type_id is None:
        return None
    return Btf(read_btf_data(btf_id)).func_name(type_id)


def _get_info(fd: int, info: ctypes.Structure, detail: str) -> int:
    attr = InfoByFdAttr(bpf_fd=fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info))
    bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, detail)
    return int(attr.info_len)
