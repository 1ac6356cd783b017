"""Bytecode of the demo programs, hand-assembled with :mod:`otel_bpf.kernel.asm`.

Each program does as little as its attach point allows, except ``otel_demo_slow``, which
runs a bounded loop (accepted by the verifier since Linux 5.3) so that its average runtime
stands out from the others.
"""

from __future__ import annotations

from dataclasses import dataclass

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import ProgType
from otel_bpf.kernel.asm import R0, R1, R2

# enum bpf_attach_type values used at load time (include/uapi/linux/bpf.h).
BPF_CGROUP_INET_EGRESS = 1
BPF_XDP = 37

XDP_DROP = 1
# A socket filter returns how many bytes of the packet to keep: 0 drops it, so the
# receiving socket's buffer never fills and every datagram sent means exactly one run.
SK_DROP = 0
# A cgroup_skb program returns 1 to let the packet through, 0 to make sendmsg fail.
CGROUP_SKB_PASS = 1

SLOW_LOOP_ITERATIONS = 1000

SOCK = "otel_demo_sock"
XDP = "otel_demo_xdp"
CGROUP_SKB = "otel_demo_cgskb"
SLOW = "otel_demo_slow"

# The worker's cgroup is <prefix><worker pid> under the cgroup v2 root.
CGROUP_PREFIX = "otel-demo-"


@dataclass(frozen=True)
class DemoProgram:
    """One demo program: its name (the kernel keeps 15 characters), type and bytecode."""

    name: str
    prog_type: ProgType
    insns: bytes
    expected_attach_type: int = 0
    description: str = ""


def return_const(value: int) -> bytes:
    """``return value;``"""
    return asm.assemble([asm.mov64_imm(R0, value), asm.exit_()])


def slow_loop(iterations: int = SLOW_LOOP_ITERATIONS) -> bytes:
    """A socket filter that folds a counter ``iterations`` times, then drops the packet.

    The multiply makes each iteration depend on the previous one, so the loop cannot run
    faster than its latency chain whatever the CPU.
    """
    return asm.assemble(
        [
            asm.mov64_imm(R1, 0),
            asm.mov64_imm(R2, 1),
            # loop:
            asm.alu64_imm("mul", R2, 31),
            asm.alu64_reg("add", R2, R1),
            asm.alu64_imm("add", R1, 1),
            asm.jmp_imm("jlt", R1, iterations, -4),
            asm.mov64_imm(R0, SK_DROP),
            asm.exit_(),
        ]
    )


PROGRAMS: tuple[DemoProgram, ...] = (
    DemoProgram(
        SOCK,
        ProgType.SOCKET_FILTER,
        return_const(SK_DROP),
        description="socket filter on a loopback UDP socket: one run per datagram received",
    ),
    DemoProgram(
        XDP,
        ProgType.XDP,
        return_const(XDP_DROP),
        BPF_XDP,
        description="XDP (generic mode) on a veth: one run per frame sent from its peer",
    ),
    DemoProgram(
        CGROUP_SKB,
        ProgType.CGROUP_SKB,
        return_const(CGROUP_SKB_PASS),
        BPF_CGROUP_INET_EGRESS,
        description="cgroup_skb egress on a new cgroup: one run per datagram its socket sends",
    ),
    DemoProgram(
        SLOW,
        ProgType.SOCKET_FILTER,
        slow_loop(),
        description=f"socket filter with a {SLOW_LOOP_ITERATIONS}-iteration loop",
    ),
)

PROGRAM_NAMES: tuple[str, ...] = tuple(p.name for p in PROGRAMS)

# Runs per second when the caller does not choose.
DEFAULT_RATES: dict[str, float] = {SOCK: 1000.0, XDP: 500.0, CGROUP_SKB: 250.0, SLOW: 200.0}


def program(name: str) -> DemoProgram:
    """The demo program called ``name``."""
    for p in PROGRAMS:
        if p.name == name:
            return p
    raise KeyError(name)


def canonical_name(name: str) -> str:
    """``sock`` or ``otel_demo_sock`` -> ``otel_demo_sock``; ValueError for anything else."""
    full = name if name.startswith("otel_demo_") else "otel_demo_" + name
    if full not in PROGRAM_NAMES:
        short = ", ".join(n.removeprefix("otel_demo_") for n in PROGRAM_NAMES)
        raise ValueError(f"unknown demo program {name!r} (choose from {short})")
    return full
