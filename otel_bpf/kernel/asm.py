"""A small eBPF assembler: named instructions encoded as the kernel's 8-byte ``bpf_insn``.

Programs are written as lists of :class:`Insn` built by the helpers below, e.g.::

    prog = [mov64_imm(R0, 0), exit_()]

Encoding (``include/uapi/linux/bpf.h``): ``u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm``.
``ld_imm64`` occupies two slots.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

# Registers.
R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, R10 = range(11)

# Instruction classes.
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_JMP32 = 0x06
BPF_ALU64 = 0x07
# Sizes.
BPF_W, BPF_H, BPF_B, BPF_DW = 0x00, 0x08, 0x10, 0x18
# Modes.
BPF_IMM, BPF_ABS, BPF_IND, BPF_MEM, BPF_ATOMIC = 0x00, 0x20, 0x40, 0x60, 0xC0
# Sources.
BPF_K, BPF_X = 0x00, 0x08
# ALU operations.
ALU_OPS = {
    "add": 0x00,
    "sub": 0x10,
    "mul": 0x20,
    "div": 0x30,
    "or": 0x40,
    "and": 0x50,
    "lsh": 0x60,
    "rsh": 0x70,
    "neg": 0x80,
    "mod": 0x90,
    "xor": 0xA0,
    "mov": 0xB0,
    "arsh": 0xC0,
}
# Jump operations.
JMP_OPS = {
    "ja": 0x00,
    "jeq": 0x10,
    "jgt": 0x20,
    "jge": 0x30,
    "jset": 0x40,
    "jne": 0x50,
    "jsgt": 0x60,
    "jsge": 0x70,
    "call": 0x80,
    "exit": 0x90,
    "jlt": 0xA0,
    "jle": 0xB0,
    "jslt": 0xC0,
    "jsle": 0xD0,
}
SIZES = {1: BPF_B, 2: BPF_H, 4: BPF_W, 8: BPF_DW}

# src_reg values of ld_imm64 that make the kernel resolve imm as an object.
BPF_PSEUDO_MAP_FD = 1


@dataclass(frozen=True, slots=True)
class Insn:
    """One ``struct bpf_insn``."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        """The 8 bytes the kernel reads (little-endian hosts: x86_64, aarch64)."""
        return struct.pack(
            "<BBHI", self.code, (self.src << 4) | self.dst, self.off & 0xFFFF, self.imm & 0xFFFFFFFF
        )


def assemble(insns: Iterable[Insn]) -> bytes:
    """Concatenate encoded instructions."""
    return b"".join(i.encode() for i in insns)


def alu64_imm(op: str, dst: int, imm: int) -> Insn:
    """``dst op= imm`` on 64 bits."""
    return Insn(BPF_ALU64 | ALU_OPS[op] | BPF_K, dst, 0, 0, imm)


def alu64_reg(op: str, dst: int, src: int) -> Insn:
    """``dst op= src`` on 64 bits."""
    return Insn(BPF_ALU64 | ALU_OPS[op] | BPF_X, dst, src)


def mov64_imm(dst: int, imm: int) -> Insn:
    """``dst = imm``."""
    return alu64_imm("mov", dst, imm)


def mov64_reg(dst: int, src: int) -> Insn:
    """``dst = src``."""
    return alu64_reg("mov", dst, src)


def ldx_mem(size: int, dst: int, src: int, off: int) -> Insn:
    """``dst = *(size *)(src + off)``, size in bytes."""
    return Insn(BPF_LDX | SIZES[size] | BPF_MEM, dst, src, off)


def stx_mem(size: int, dst: int, src: int, off: int) -> Insn:
    """``*(size *)(dst + off) = src``, size in bytes."""
    return Insn(BPF_STX | SIZES[size] | BPF_MEM, dst, src, off)


def st_mem(size: int, dst: int, off: int, imm: int) -> Insn:
    """``*(size *)(dst + off) = imm``, size in bytes."""
    return Insn(BPF_ST | SIZES[size] | BPF_MEM, dst, 0, off, imm)


def jmp_imm(op: str, dst: int, imm: int, off: int) -> Insn:
    """``if (dst op imm) goto pc + 1 + off``."""
    return Insn(BPF_JMP | JMP_OPS[op] | BPF_K, dst, 0, off, imm)


def jmp_reg(op: str, dst: int, src: int, off: int) -> Insn:
    """``if (dst op src) goto pc + 1 + off``."""
    return Insn(BPF_JMP | JMP_OPS[op] | BPF_X, dst, src, off)


def ja(off: int) -> Insn:
    """``goto pc + 1 + off``."""
    return Insn(BPF_JMP | JMP_OPS["ja"], 0, 0, off)


def call(helper_id: int) -> Insn:
    """Call BPF helper number ``helper_id``."""
    return Insn(BPF_JMP | JMP_OPS["call"], 0, 0, 0, helper_id)


def exit_() -> Insn:
    """Return R0."""
    return Insn(BPF_JMP | JMP_OPS["exit"])


def ld_imm64(dst: int, imm: int, src: int = 0) -> list[Insn]:
    """``dst = imm64`` (two slots); ``src=BPF_PSEUDO_MAP_FD`` loads a map pointer from an fd."""
    return [
        Insn(BPF_LD | BPF_DW | BPF_IMM, dst, src, 0, imm & 0xFFFFFFFF),
        Insn(0, 0, 0, 0, (imm >> 32) & 0xFFFFFFFF),
    ]


def ld_map_fd(dst: int, map_fd: int) -> list[Insn]:
    """``dst = &map`` for the map behind ``map_fd``."""
    return ld_imm64(dst, map_fd, BPF_PSEUDO_MAP_FD)


# -- Pseudo sources for map values and kfuncs, and forward/backward jumps by label -------

# ld_imm64 src_reg: imm is a map fd and the second slot's imm an offset into the value of
# element 0 (array maps only); the register becomes a non-NULL pointer to map value.
BPF_PSEUDO_MAP_VALUE = 2
# call src_reg: imm is the BTF id of a kernel function (a kfunc) in vmlinux BTF.
BPF_PSEUDO_KFUNC_CALL = 2


def ld_map_value(dst: int, map_fd: int, offset: int = 0) -> list[Insn]:
    """``dst = &value_of_element_0(map) + offset`` for the array map behind ``map_fd``."""
    return [
        Insn(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_VALUE, 0, map_fd),
        Insn(0, 0, 0, 0, offset),
    ]


def kfunc_call(btf_id: int) -> Insn:
    """Call the kernel function whose ``FUNC`` type in vmlinux BTF has id ``btf_id``."""
    return Insn(BPF_JMP | JMP_OPS["call"], 0, BPF_PSEUDO_KFUNC_CALL, 0, btf_id)


@dataclass(frozen=True, slots=True)
class _LabelJump:
    insn: Insn
    target: str


class Builder:
    """Collects instructions and resolves jumps to named labels when assembled.

    ``b.jmp_imm("jeq", R0, 0, "out")`` ... ``b.label("out")``; a label may come before or
    after its jumps.  Offsets count instruction slots, so ``ld_imm64`` counts twice.
    """

    def __init__(self) -> None:
        self._items: list[Insn | _LabelJump] = []
        self._labels: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def emit(self, *insns: Insn | list[Insn]) -> None:
        """Append instructions (a list, as ``ld_imm64`` returns, is flattened)."""
        for item in insns:
            if isinstance(item, list):
                self._items.extend(item)
            else:
                self._items.append(item)

    def label(self, name: str) -> None:
        """Name the position of the next instruction."""
        if name in self._labels:
            raise ValueError(f"label {name!r} defined twice")
        self._labels[name] = len(self._items)

    def jmp_imm(self, op: str, dst: int, imm: int, target: str) -> None:
        """``if (dst op imm) goto target``."""
        self._items.append(_LabelJump(jmp_imm(op, dst, imm, 0), target))

    def jmp_reg(self, op: str, dst: int, src: int, target: str) -> None:
        """``if (dst op src) goto target``."""
        self._items.append(_LabelJump(jmp_reg(op, dst, src, 0), target))

    def ja(self, target: str) -> None:
        """``goto target``."""
        self._items.append(_LabelJump(ja(0), target))

    def insns(self) -> list[Insn]:
        """The instructions with every jump offset resolved."""
        out: list[Insn] = []
        for pc, item in enumerate(self._items):
            if isinstance(item, _LabelJump):
                if item.target not in self._labels:
                    raise ValueError(f"jump to undefined label {item.target!r}")
                off = self._labels[item.target] - pc - 1
                if not -(1 << 15) <= off < (1 << 15):
                    raise ValueError(f"jump to {item.target!r} too far ({off} slots)")
                i = item.insn
                out.append(Insn(i.code, i.dst, i.src, off, i.imm))
            else:
                out.append(item)
        return out

    def assemble(self) -> bytes:
        """The encoded program."""
        return assemble(self.insns())
