"""The assembler's encoding, against instruction bytes fixed by the eBPF ISA.

Each expected value is ``code, dst|src<<4, off (s16 LE), imm (s32 LE)``, as written in
``Documentation/bpf/standardization/instruction-set.rst``; a kernel test checks the demo
programs byte for byte against the kernel's own copy (``bpftool prog dump xlated``).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile

import pytest

from otel_bpf.demo import programs as demo
from otel_bpf.kernel import asm
from otel_bpf.kernel.asm import R0, R1, R2, R6, R10
from otel_bpf.kernel.loader import load_program, program_id
from otel_bpf.kernel.syscall import close


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


@pytest.mark.parametrize(
    ("insns", "expected"),
    [
        ([asm.mov64_imm(R0, 0)], "b7 00 0000 00000000"),
        ([asm.exit_()], "95 00 0000 00000000"),
        ([asm.mov64_imm(R1, -1)], "b7 01 0000 ffffffff"),
        ([asm.mov64_reg(R6, R1)], "bf 16 0000 00000000"),
        ([asm.alu64_imm("add", R1, 1)], "07 01 0000 01000000"),
        ([asm.alu64_imm("mul", R2, 31)], "27 02 0000 1f000000"),
        ([asm.alu64_reg("add", R2, R1)], "0f 12 0000 00000000"),
        ([asm.alu64_imm("rsh", R0, 3)], "77 00 0000 03000000"),
        ([asm.ldx_mem(4, R0, R1, 4)], "61 10 0400 00000000"),
        ([asm.ldx_mem(8, R2, R10, -16)], "79 a2 f0ff 00000000"),
        ([asm.stx_mem(8, R10, R1, -8)], "7b 1a f8ff 00000000"),
        ([asm.st_mem(4, R10, -4, 0x1234)], "62 0a fcff 34120000"),
        ([asm.st_mem(1, R10, -1, 7)], "72 0a ffff 07000000"),
        ([asm.jmp_imm("jlt", R1, 1000, -4)], "a5 01 fcff e8030000"),
        ([asm.jmp_imm("jeq", R0, 0, 1)], "15 00 0100 00000000"),
        ([asm.jmp_reg("jeq", R1, R2, 3)], "1d 21 0300 00000000"),
        ([asm.ja(2)], "05 00 0200 00000000"),
        ([asm.call(1)], "85 00 0000 01000000"),
        (
            asm.ld_imm64(R1, 0x1122334455667788),
            "18 01 0000 88776655 00 00 0000 44332211",
        ),
        (asm.ld_map_fd(R1, 5), "18 11 0000 05000000 00 00 0000 00000000"),
    ],
)
def test_encoding(insns: list[asm.Insn], expected: str) -> None:
    assert asm.assemble(insns) == h(expected)


def test_every_instruction_is_eight_bytes() -> None:
    for p in demo.PROGRAMS:
        assert len(p.insns) % 8 == 0 and p.insns


def test_slow_loop_jumps_back_to_its_first_instruction() -> None:
    insns = demo.slow_loop(300)
    # Slot 5 is the conditional jump; pc + 1 + off must land on slot 2, the loop body.
    code, regs, off, imm = (
        insns[5 * 8],
        insns[5 * 8 + 1],
        insns[5 * 8 + 2 : 5 * 8 + 4],
        insns[5 * 8 + 4 : 5 * 8 + 8],
    )
    assert code == 0xA5 and regs == R1
    assert 5 + 1 + int.from_bytes(off, "little", signed=True) == 2
    assert int.from_bytes(imm, "little") == 300


@pytest.mark.kernel
@pytest.mark.parametrize("name", demo.PROGRAM_NAMES)
def test_kernel_holds_the_bytes_we_assembled(name: str) -> None:
    """The verifier rewrites none of these instructions, so the xlated copy equals ours."""
    p = demo.program(name)
    fd = load_program(p.prog_type, p.insns, p.name, expected_attach_type=p.expected_attach_type)
    try:
        prog_id = program_id(fd)
        shown = json.loads(
            subprocess.check_output(["bpftool", "-j", "prog", "show", "id", str(prog_id)])
        )
        assert shown["name"] == name[:15]
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "xlated")
            subprocess.run(
                ["bpftool", "prog", "dump", "xlated", "id", str(prog_id), "file", path],
                check=True,
                capture_output=True,
                timeout=30,
            )
            with open(path, "rb") as f:
                assert f.read() == p.insns
    finally:
        close(fd)
