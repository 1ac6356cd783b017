"""Fast look-ups in the kernel's own BTF (``/sys/kernel/btf/vmlinux``): type ids and offsets.

The iterator programs need a few FUNC ids (attach targets, kfuncs), STRUCT ids and member
offsets, and they need them at start-up.  vmlinux BTF holds ~126k types in ~5 MiB; indexing
all of it in Python costs ~100 ms, so this module does not.  A BTF type id is the record's
position in the type section, which has variable-sized records, so ids can only be counted
by walking from the start.  The walk is kept short:

1. each name is found with one ``find`` in the string section (strings are stored once),
2. records are counted from the start only until every wanted name has been met (names
   declared together with :meth:`VmlinuxBtf.prefetch` are collected in the same walk),
   keeping an anchor every 1024 ids so later look-ups (the type of an anonymous member)
   restart near their target.  Searching the type section for the 4-byte ``name_off`` with
   ``find`` instead was slower: a few ms per name.

Since Linux 6.16 the file can be mmap()ed, which touches only the pages the walk reads; older
kernels allow only ``read()`` (in 4 KiB steps for sysfs binary files), which is slower.

Record layout (``include/uapi/linux/btf.h``): a 24-byte header, then the type section (each
type a 12-byte ``btf_type`` followed by kind-specific data), then the string section.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

# The kind-specific sizes are defined once, next to the program-BTF parser.
from otel_bpf.kernel.btf import BTF_MAGIC, type_record_size
from otel_bpf.kernel.errors import BpfUnsupportedError

VMLINUX_BTF_PATH = "/sys/kernel/btf/vmlinux"

KIND_INT = 1
KIND_PTR = 2
KIND_STRUCT = 4
KIND_UNION = 5
KIND_ENUM = 6
KIND_FUNC = 12
KIND_ENUM64 = 19

_HEADER = struct.Struct("<HBBIIIII")
_ANCHOR_SHIFT = 10  # one anchor every 1024 type ids
_ANCHOR_EVERY = 1 << _ANCHOR_SHIFT


class VmlinuxBtfError(BpfUnsupportedError):
    """vmlinux BTF is missing, malformed, or lacks a type/member the caller needs."""


@dataclass(frozen=True, slots=True)
class Member:
    """A struct/union member: byte offset from the start of the outer type, and its type."""

    offset: int
    type_id: int
    bitfield: bool


def _step_words(info: int) -> int:
    """Length in 4-byte words of a record whose ``info`` word is ``info``."""
    return type_record_size(info) // 4


class _Steps(dict[int, int]):
    """``info`` word -> record length in words, filled on first use (~300 distinct values)."""

    def __missing__(self, info: int) -> int:
        step = self[info] = _step_words(info)
        return step


class VmlinuxBtf:
    """One open view of vmlinux BTF.  Use as a context manager, or call :meth:`close`."""

    def __init__(self, path: str = VMLINUX_BTF_PATH) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise VmlinuxBtfError(
                err.errno or errno.ENOENT,
                f"cannot open {path}: {err.strerror} (kernel built without CONFIG_DEBUG_INFO_BTF?)",
            ) from None
        self._map: mmap.mmap | None = None
        data: mmap.mmap | bytes
        try:
            try:
                self._map = mmap.mmap(fd, 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
                data = self._map
            except (OSError, ValueError):
                # Before 6.16 sysfs refuses mmap of this file.
                data = _read_all(fd)
        finally:
            os.close(fd)
        self._data = data
        if len(data) < _HEADER.size:
            raise VmlinuxBtfError(errno.EINVAL, f"{path}: shorter than a BTF header")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = (
            _HEADER.unpack_from(data)
        )
        if magic != BTF_MAGIC:
            raise VmlinuxBtfError(errno.EINVAL, f"{path}: bad BTF magic {magic:#x}")
        self._types_start = hdr_len + type_off
        self._types_end = self._types_start + type_len
        self._strs_start = hdr_len + str_off
        self._strs_end = self._strs_start + str_len
        if self._types_end > len(data) or self._strs_end > len(data) or self._types_start % 4:
            raise VmlinuxBtfError(errno.EINVAL, f"{path}: BTF sections out of bounds")
        self._words = memoryview(data)[self._types_start : self._types_end].cast("I")
        self._steps = _Steps()
        # name_off -> (id, position) of every record so named in the part walked so far.
        self._hits: dict[int, list[tuple[int, int]]] = {}
        # Walk state: position (in words) of the record with id _next_id.
        self._pos = 0
        self._next_id = 1
        self._done = type_len == 0
        self._anchors: list[int] = []  # anchors[k] = word position of id k*1024 + 1
        self._name_offs: dict[str, int | None] = {}

    # -- life cycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Release the mapping; look-ups after this fail."""
        self._words.release()
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self) -> VmlinuxBtf:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- public look-ups -----------------------------------------------------------------

    def type_id(self, name: str, kind: int) -> int:
        """The id of the first type called ``name`` of ``kind`` (``KIND_FUNC``, ...)."""
        found = self._find(name, kind)
        if found is None:
            raise VmlinuxBtfError(
                errno.ENOENT, f"vmlinux BTF has no {_KIND_NAMES.get(kind, kind)} {name!r}"
            )
        return found[0]

    def func_id(self, name: str) -> int:
        """The id of ``FUNC name`` (an attach target such as ``bpf_iter_bpf_prog``, a kfunc)."""
        return self.type_id(name, KIND_FUNC)

    def struct_id(self, name: str) -> int:
        """The id of ``STRUCT name``."""
        return self.type_id(name, KIND_STRUCT)

    def has_func(self, name: str) -> bool:
        """Whether ``FUNC name`` exists (e.g. a kfunc that only newer kernels have)."""
        return self._find(name, KIND_FUNC) is not None

    def struct_size(self, name: str) -> int:
        """``sizeof(struct name)``."""
        pos = self._position(self.struct_id(name))
        return int(self._words[pos + 2])

    def member(self, struct_name: str, member_name: str) -> Member:
        """Member ``member_name`` of ``struct struct_name``, looking inside anonymous
        structs and unions (``union { struct bpf_iter_meta *meta; }`` in iterator contexts)."""
        want = self._name_off(member_name)
        if want is not None:
            found = self._member_in(self._position(self.struct_id(struct_name)), want, 0, 0)
            if found is not None:
                return found
        raise VmlinuxBtfError(
            errno.ENOENT, f"vmlinux BTF: struct {struct_name} has no member {member_name!r}"
        )

    def member_offset(self, struct_name: str, member_name: str) -> int:
        """``offsetof(struct struct_name, member_name)`` in bytes."""
        return self.member(struct_name, member_name).offset

    def enum_values(self, name: str) -> dict[str, int]:
        """Enumerator name -> value of ``enum name`` (``ENUM`` or ``ENUM64``), in the order
        BTF lists them (signedness from the record's kind flag)."""
        found = self._find(name, KIND_ENUM) or self._find(name, KIND_ENUM64)
        if found is None:
            raise VmlinuxBtfError(errno.ENOENT, f"vmlinux BTF has no enum {name!r}")
        words, pos = self._words, found[1]
        info = words[pos + 1]
        signed = bool(info >> 31)
        wide = (info >> 24) & 0x1F == KIND_ENUM64
        step = 3 if wide else 2
        values: dict[str, int] = {}
        for i in range(info & 0xFFFF):
            e = pos + 3 + step * i
            value = words[e + 1] | (words[e + 2] << 32 if wide else 0)
            bits = 64 if wide else 32
            if signed and value >> (bits - 1):
                value -= 1 << bits
            values[self._string(words[e])] = value
        return values

    def _string(self, name_off: int) -> str:
        start = self._strs_start + name_off
        end = self._data.find(b"\0", start, self._strs_end)
        if name_off >= self._strs_end - self._strs_start or end < 0:
            raise VmlinuxBtfError(errno.EINVAL, f"vmlinux BTF: bad string offset {name_off}")
        return bytes(self._data[start:end]).decode(errors="replace")

    def type_name(self, type_id: int) -> str:
        """The name of type ``type_id`` (empty for an anonymous type); VmlinuxBtfError when
        there is no such id.  Walks to the id once; later look-ups start from an anchor."""
        name_off = self._words[self._position(type_id)]
        start = self._strs_start + name_off
        end = self._data.find(b"\0", start, self._strs_end)
        if name_off >= self._strs_end - self._strs_start or end < 0:
            raise VmlinuxBtfError(errno.EINVAL, f"vmlinux BTF: bad name of type id {type_id}")
        return bytes(self._data[start:end]).decode(errors="replace")

    # -- internals -----------------------------------------------------------------------

    def _name_off(self, name: str) -> int | None:
        if name in self._name_offs:
            return self._name_offs[name]
        # Every string is preceded by a NUL (the section starts with the empty string).
        hit = self._data.find(b"\0" + name.encode() + b"\0", self._strs_start, self._strs_end)
        off = None if hit < 0 else hit + 1 - self._strs_start
        self._name_offs[name] = off
        return off

    def prefetch(self, names: Iterable[str]) -> None:
        """Declare names about to be looked up, so one walk collects them all.

        Names declared after the walk went past them cost a second walk over that part (one
        for all the names of the call), so declare everything before the first look-up.
        """
        new = set()
        for name in names:
            name_off = self._name_off(name)
            if name_off is not None and name_off not in self._hits:
                new.add(name_off)
        self._watch(new)

    def _watch(self, name_offs: set[int]) -> None:
        """Collect records named by ``name_offs``, in the part already walked and from now on
        as the walk goes."""
        hits: dict[int, list[tuple[int, int]]] = {off: [] for off in name_offs}
        words, steps = self._words, self._steps
        pos, tid, end = 0, 1, self._pos if name_offs else 0
        while pos < end:
            if words[pos] in hits:
                hits[words[pos]].append((tid, pos))
            pos += steps[words[pos + 1]]
            tid += 1
        self._hits.update(hits)

    def _find(self, name: str, kind: int) -> tuple[int, int] | None:
        name_off = self._name_off(name)
        if name_off is None:
            return None
        if name_off not in self._hits:
            self._watch({name_off})
        hits = self._hits[name_off]
        checked = 0
        while True:
            for type_id, pos in hits[checked:]:
                if (self._words[pos + 1] >> 24) & 0x1F == kind:
                    return type_id, pos
            checked = len(hits)
            if self._done:
                return None
            self._advance_block()

    def _position(self, type_id: int) -> int:
        """Word position of the record with id ``type_id``."""
        while type_id >= self._next_id and not self._done:
            self._advance_block()
        if not 1 <= type_id < self._next_id:
            raise VmlinuxBtfError(errno.ENOENT, f"vmlinux BTF has no type id {type_id}")
        k = (type_id - 1) >> _ANCHOR_SHIFT
        cur, tid = self._anchors[k], (k << _ANCHOR_SHIFT) + 1
        words, steps = self._words, self._steps
        while tid < type_id:
            cur += steps[words[cur + 1]]
            tid += 1
        return cur

    def _advance_block(self) -> None:
        """Walk the next 1024 records (fewer at the end), recording an anchor at the start.

        The hot loop of start-up: one dict look-up per record, no per-record stop test;
        callers step back through the anchors to the record they want.
        """
        words, steps, hits = self._words, self._steps, self._hits
        pos, tid = self._pos, self._next_id
        self._anchors.append(pos)
        walked = _ANCHOR_EVERY
        try:
            for i in range(_ANCHOR_EVERY):
                if words[pos] in hits:
                    hits[words[pos]].append((tid + i, pos))
                pos += steps[words[pos + 1]]
        except IndexError:
            # words[pos] past the end: the section ended at record i.
            walked = i
        if pos > len(words) or (walked < _ANCHOR_EVERY and pos != len(words)):
            raise VmlinuxBtfError(errno.EINVAL, "vmlinux BTF: type section ends inside a record")
        self._pos, self._next_id = pos, self._next_id + walked
        self._done = pos >= len(words)

    def _member_in(self, pos: int, want: int, base: int, depth: int) -> Member | None:
        words = self._words
        info = words[pos + 1]
        kind = (info >> 24) & 0x1F
        if kind not in (KIND_STRUCT, KIND_UNION) or depth > 8:
            return None
        kind_flag = info >> 31
        anonymous: list[tuple[int, int]] = []
        for i in range(info & 0xFFFF):
            m = pos + 3 + 3 * i
            name_off, type_id, raw = words[m], words[m + 1], words[m + 2]
            bit_off = raw & 0xFFFFFF if kind_flag else raw
            bitfield = bool(kind_flag and raw >> 24)
            if name_off == want:
                return Member(base + bit_off // 8, type_id, bitfield)
            if name_off == 0:
                anonymous.append((type_id, base + bit_off // 8))
        for type_id, offset in anonymous:
            found = self._member_in(self._position(type_id), want, offset, depth + 1)
            if found is not None:
                return found
        return None


_KIND_NAMES = {
    KIND_INT: "INT",
    KIND_PTR: "PTR",
    KIND_STRUCT: "STRUCT",
    KIND_UNION: "UNION",
    KIND_ENUM: "ENUM",
    KIND_FUNC: "FUNC",
    KIND_ENUM64: "ENUM64",
}


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
