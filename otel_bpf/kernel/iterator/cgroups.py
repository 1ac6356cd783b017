"""The ``iter/cgroup`` program (6.1): programs attached to cgroups with ``BPF_PROG_ATTACH``.

A cgroup keeps the programs attached to it in ``cgrp->bpf.progs[]``: one list of
``struct bpf_prog_list`` per attach-type slot (``enum cgroup_bpf_attach_type``, the kernel's
own numbering: ``CGROUP_INET_INGRESS`` ..., ``CGROUP_LSM_START`` .. ``CGROUP_LSM_END``), and
the slot's attach flags in ``cgrp->bpf.flags[]``.  An entry holds either a program
(``BPF_PROG_ATTACH``: ``pl->prog`` set, ``pl->link`` NULL) or a link (``pl->link`` set; the
link walk reports those).  ``BPF_PROG_QUERY`` answers the same lists one cgroup and attach
type at a time; this program reads them all in one pass over the hierarchy.

The iterator is attached to the cgroup2 root directory with order
``BPF_CGROUP_ITER_DESCENDANTS_PRE``: it runs once per live cgroup, with ``cgroup_mutex``
held for the whole pass (attach and detach take it too, so the lists do not change under
it).  The program reads ``progs[]`` and ``flags[]`` into its stack with one
``bpf_probe_read_kernel``, then walks each non-empty list with ``bpf_probe_read_kernel`` on
addresses held as integers (the entries' struct is private to the kernel's cgroup code, and
a ``struct hlist_node`` pointer cannot be turned into its container by typed loads).  The
walk is bounded: a hook holds at most 64 programs (``BPF_CGROUP_MAX_PROGS``).

The loops are open-coded ``bpf_iter_num`` iterators (6.4), which the verifier checks in a
few hundred instructions; before 6.4 they are bounded loops, which it checks iteration by
iteration (about 160,000 instructions), so their body has no branch it must come back to.

One 16-byte record (:data:`RECORD`) per entry: the cgroup id (``cgrp->kn->id``, the cgroup2
directory's inode number), the program id (0 for a link's entry, whose ``pl->prog`` is
NULL), the slot, the slot's flags and whether the entry holds a link; :func:`decode` keeps
the programs attached without a link.  With ``bpf_iter_num`` a link's entry is not written
at all.

A pass must fit one ``read()`` (the kernel's cgroup iterator cannot resume after the
cgroup mutex was dropped, and says EOPNOTSUPP): 32 KiB, about 2,000 records.  A read that
fails so is made by the query walk instead (:mod:`otel_bpf.kernel.attach_query`).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass, replace
from typing import NamedTuple

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import (
    AttachType,
    Cmd,
    InfoByFdAttr,
    ProgInfo,
    u32,
    u64,
)
from otel_bpf.kernel.asm import R0, R1, R2, R3, R6, R7, R8, R9, R10, Builder
from otel_bpf.kernel.fd import KernelFd
from otel_bpf.kernel.iterator._common import OwnedFds, probe_read_to_stack, seq_write_from_stack
from otel_bpf.kernel.links import link_id
from otel_bpf.kernel.syscall import bpf
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf, VmlinuxBtfError

PROGRAM_NAME = "otel_bpf_cgrps"

RECORD = struct.Struct("=QIBBBB")
"""cgroup id, program id (0: none, or unreadable), slot, the slot's flags, whether the entry
is a link's (1) or a program's (0), 0.  Native byte order: the program stores the kernel's
values as they are."""

MAX_PROGS = 64
"""``BPF_CGROUP_MAX_PROGS``: the most entries one slot's list can hold."""

ENUM = "cgroup_bpf_attach_type"
_LSM_START, _LSM_END, _MAX = "CGROUP_LSM_START", "CGROUP_LSM_END", "MAX_CGROUP_BPF_ATTACH_TYPE"

BPF_CGROUP_ITER_DESCENDANTS_PRE = 2
"""``enum bpf_cgroup_iter_order``: the start cgroup, then its descendants, parents first."""

BTF_NAMES = (
    "bpf_iter_cgroup",
    "bpf_iter__cgroup",
    "bpf_iter_meta",
    "cgroup",
    "cgroup_bpf",
    "kernfs_node",
    "bpf_prog_list",
    "hlist_node",
    "bpf_prog",
    "bpf_prog_aux",
    ENUM,
    "bpf_iter_num_new",
    "bpf_iter_num_next",
    "bpf_iter_num_destroy",
)

# Stack layout (offsets from R10): the record, a scratch word, the entry being read, then
# progs[] and flags[] as read from the cgroup.
_REC = -16
_SCRATCH = -24
_IT_SLOTS = -32  # struct bpf_iter_num over the slots
_IT_ENTRIES = -40  # and over one slot's entries


class CgroupProgRecord(NamedTuple):
    """One program attached with ``BPF_PROG_ATTACH`` at one slot of one cgroup."""

    cgroup_id: int
    prog_id: int
    slot: int
    flags: int


def slot_names(values: dict[str, int]) -> tuple[str, ...]:
    """The uapi attach type name (``cgroup_inet_ingress``, ..., ``lsm_cgroup``) of each slot
    of ``cgrp->bpf.progs[]``, from the enumerators of ``enum cgroup_bpf_attach_type``.

    The kernel names each slot after its ``BPF_`` attach type without the prefix
    (``to_cgroup_bpf_attach_type``); the slots ``CGROUP_LSM_START`` .. ``CGROUP_LSM_END``
    are all ``BPF_LSM_CGROUP`` hooks.  A slot this version does not know keeps its
    enumerator's name, lowercased."""
    count = values.get(_MAX)
    if count is None or not 0 < count <= 255:
        raise ValueError(f"enum {ENUM} has no usable {_MAX}")
    lsm = range(values.get(_LSM_START, count), values.get(_LSM_END, count - 1) + 1)
    by_value: dict[int, str] = {}
    for name, value in values.items():
        if 0 <= value < count and name not in (_LSM_START, _LSM_END):
            by_value.setdefault(value, name.lower())
    names = []
    for slot in range(count):
        if slot in lsm:
            names.append("lsm_cgroup")
        elif slot in by_value:
            names.append(by_value[slot])
        else:
            names.append(f"cgroup_slot_{slot}")
    return tuple(names)


@dataclass(frozen=True)
class CgroupIterLayout:
    """BTF ids and byte offsets the program is assembled with (all from vmlinux BTF)."""

    attach_btf_id: int  # FUNC bpf_iter_cgroup
    ctx_meta: int
    ctx_cgroup: int
    meta_seq: int
    cgroup_kn: int
    kn_id: int
    progs: int
    """Offset of ``bpf.progs[]`` in ``struct cgroup``."""
    flags: int
    """Offset of ``bpf.flags[]`` in ``struct cgroup``."""
    slots: int
    """``MAX_CGROUP_BPF_ATTACH_TYPE``."""
    entry_node: int
    node_next: int
    entry_prog: int
    entry_link: int
    prog_aux: int
    aux_id: int
    slot_names: tuple[str, ...]
    iter_num_new: int = 0
    iter_num_next: int = 0
    iter_num_destroy: int = 0
    """BTF ids of the ``bpf_iter_num`` kfuncs (6.4); 0: the loops are bounded loops."""

    @classmethod
    def from_btf(cls, btf: VmlinuxBtf) -> CgroupIterLayout:
        """Read every id and offset; raises :class:`VmlinuxBtfError` without the iterator."""
        btf.prefetch(BTF_NAMES)
        off = btf.member_offset
        try:
            names = slot_names(btf.enum_values(ENUM))
        except ValueError as err:
            raise VmlinuxBtfError(errno.EINVAL, str(err)) from None
        bpf_at = off("cgroup", "bpf")
        progs, flags = bpf_at + off("cgroup_bpf", "progs"), bpf_at + off("cgroup_bpf", "flags")
        # hlist_head is one pointer: progs[] ends where flags[] starts in every kernel so
        # far; anything else means a layout this program does not know.
        if flags - progs != 8 * len(names):
            raise VmlinuxBtfError(errno.EINVAL, "struct cgroup_bpf: an unknown layout")
        return cls(
            attach_btf_id=btf.func_id("bpf_iter_cgroup"),
            ctx_meta=off("bpf_iter__cgroup", "meta"),
            ctx_cgroup=off("bpf_iter__cgroup", "cgroup"),
            meta_seq=off("bpf_iter_meta", "seq"),
            cgroup_kn=off("cgroup", "kn"),
            kn_id=off("kernfs_node", "id"),
            progs=progs,
            flags=flags,
            slots=len(names),
            entry_node=off("bpf_prog_list", "node"),
            node_next=off("hlist_node", "next"),
            entry_prog=off("bpf_prog_list", "prog"),
            entry_link=off("bpf_prog_list", "link"),
            prog_aux=off("bpf_prog", "aux"),
            aux_id=off("bpf_prog_aux", "id"),
            slot_names=names,
            **{
                f"iter_num_{step}": btf.func_id(f"bpf_iter_num_{step}")
                if btf.has_func(f"bpf_iter_num_{step}")
                else 0
                for step in ("new", "next", "destroy")
            },
        )

    @property
    def entry_size(self) -> int:
        """Bytes of a ``bpf_prog_list`` read at once: up to its last member used."""
        return max(self.entry_node + self.node_next, self.entry_prog, self.entry_link) + 8

    @property
    def arrays_size(self) -> int:
        """Bytes of ``progs[]`` and ``flags[]``, read at once."""
        return self.flags + self.slots - self.progs


def _stack(layout: CgroupIterLayout) -> tuple[int, int]:
    """Stack offsets of the entry buffer and of the arrays buffer (8-aligned)."""
    entry = _IT_ENTRIES - (layout.entry_size + 7) // 8 * 8
    arrays = entry - (layout.arrays_size + 7) // 8 * 8
    if arrays < -512:
        raise VmlinuxBtfError(errno.EINVAL, "struct cgroup_bpf: too big for the stack")
    return entry, arrays


def build_program(layout: CgroupIterLayout) -> list[asm.Insn]:
    """The iterator program: its loops are open-coded ``bpf_iter_num`` iterators where the
    kernel has them (6.4), bounded loops otherwise.

    The verifier checks a bounded loop by walking every iteration (a cgroup's 38 slots of
    up to 64 entries each: about 160,000 instructions, 0.3 s of load time); an iterator's
    loop body is checked until its states repeat, a few times."""
    lay = layout
    entry, arrays = _stack(lay)
    iterators = bool(lay.iter_num_new and lay.iter_num_next and lay.iter_num_destroy)
    b = Builder()
    # R6 = ctx, R7 = the entry's address (an integer), R8 = entries walked in this slot
    # (bounded loops), R9 = the slot.
    b.emit(asm.mov64_reg(R6, R1))
    b.emit(asm.ldx_mem(8, R7, R6, lay.ctx_cgroup))
    b.jmp_imm("jeq", R7, 0, "out")  # the final call, after the last cgroup
    b.emit(asm.st_mem(8, R10, _REC + 8, 0), asm.st_mem(8, R10, _SCRATCH, 0))
    # cgrp->kn->id: typed loads (a fault reads 0).
    b.emit(asm.ldx_mem(8, R1, R7, lay.cgroup_kn))
    b.jmp_imm("jeq", R1, 0, "out")
    b.emit(asm.ldx_mem(8, R1, R1, lay.kn_id), asm.stx_mem(8, R10, R1, _REC))
    # progs[] and flags[] in one read.
    b.emit(asm.mov64_reg(R3, R7), asm.alu64_imm("add", R3, lay.progs))
    probe_read_to_stack(b, arrays, lay.arrays_size)
    b.jmp_imm("jne", R0, 0, "out")

    if iterators:
        _iter_num_new(b, lay, _IT_SLOTS, lay.slots)
        b.label("slot")
        b.emit(asm.mov64_reg(R1, R10), asm.alu64_imm("add", R1, _IT_SLOTS))
        b.emit(asm.kfunc_call(lay.iter_num_next))
        b.jmp_imm("jeq", R0, 0, "slots_done")
        b.emit(asm.ldx_mem(4, R9, R0, 0))
        b.jmp_imm("jge", R9, lay.slots, "slot")  # never: it tells the verifier the range
    else:
        b.emit(asm.mov64_imm(R9, 0))
        b.label("slot")
    # R7 = progs[slot].first (hlist_node *, an integer here).
    b.emit(asm.mov64_reg(R2, R9), asm.alu64_imm("lsh", R2, 3), asm.mov64_reg(R1, R10))
    b.emit(asm.alu64_reg("add", R1, R2), asm.ldx_mem(8, R7, R1, arrays))
    b.jmp_imm("jeq", R7, 0, "next_slot")
    b.emit(asm.stx_mem(1, R10, R9, _REC + 12))
    b.emit(asm.mov64_reg(R1, R10), asm.alu64_reg("add", R1, R9))
    b.emit(asm.ldx_mem(1, R1, R1, arrays + 8 * lay.slots), asm.stx_mem(1, R10, R1, _REC + 13))
    if iterators:
        _iter_num_new(b, lay, _IT_ENTRIES, MAX_PROGS)
        b.label("entry")
        b.emit(asm.mov64_reg(R1, R10), asm.alu64_imm("add", R1, _IT_ENTRIES))
        b.emit(asm.kfunc_call(lay.iter_num_next))
        b.jmp_imm("jeq", R0, 0, "entries_done")
    else:
        b.emit(asm.mov64_imm(R8, 0))
        b.label("entry")

    # Straight-line code: with bounded loops the verifier walks every iteration, and each
    # conditional jump in the body leaves a branch it must come back to (8192 at most).
    # A failed read zeroes its buffer, so a NULL pointer read through gives 0 instead of
    # a branch: a record whose program id is 0 is skipped when decoded.
    b.emit(asm.mov64_reg(R3, R7), asm.alu64_imm("sub", R3, lay.entry_node))
    probe_read_to_stack(b, entry, lay.entry_size)
    b.emit(asm.ldx_mem(8, R7, R10, entry + lay.entry_node + lay.node_next))
    # link != NULL as 0 or 1: (x | -x) >> 63.
    b.emit(asm.ldx_mem(8, R1, R10, entry + lay.entry_link), asm.mov64_reg(R2, R1))
    b.emit(asm.alu64_imm("neg", R2, 0), asm.alu64_reg("or", R1, R2), asm.alu64_imm("rsh", R1, 63))
    b.emit(asm.stx_mem(1, R10, R1, _REC + 14))
    if iterators:
        # A branch costs the iterator's loop nothing: a link's entry is not written, so a
        # pass fits one read with as many programs as possible.
        b.jmp_imm("jne", R1, 0, "entry_next")
    b.emit(asm.ldx_mem(8, R3, R10, entry + lay.entry_prog), asm.alu64_imm("add", R3, lay.prog_aux))
    probe_read_to_stack(b, _SCRATCH, 8)
    b.emit(asm.ldx_mem(8, R3, R10, _SCRATCH), asm.alu64_imm("add", R3, lay.aux_id))
    probe_read_to_stack(b, _REC + 8, 4)
    seq_write_from_stack(b, lay.ctx_meta, lay.meta_seq, _REC, RECORD.size)

    if iterators:
        b.label("entry_next")
        b.jmp_imm("jne", R7, 0, "entry")
        b.label("entries_done")
        b.emit(asm.mov64_reg(R1, R10), asm.alu64_imm("add", R1, _IT_ENTRIES))
        b.emit(asm.kfunc_call(lay.iter_num_destroy))
        b.label("next_slot")
        b.ja("slot")
        b.label("slots_done")
        b.emit(asm.mov64_reg(R1, R10), asm.alu64_imm("add", R1, _IT_SLOTS))
        b.emit(asm.kfunc_call(lay.iter_num_destroy))
    else:
        b.emit(asm.alu64_imm("add", R8, 1))
        b.jmp_imm("jeq", R7, 0, "next_slot")
        b.jmp_imm("jlt", R8, MAX_PROGS, "entry")
        b.label("next_slot")
        b.emit(asm.alu64_imm("add", R9, 1))
        b.jmp_imm("jlt", R9, lay.slots, "slot")
    b.label("out")
    b.emit(asm.mov64_imm(R0, 0), asm.exit_())
    return b.insns()


def _iter_num_new(b: Builder, lay: CgroupIterLayout, it: int, end: int) -> None:
    """``bpf_iter_num_new(R10 + it, 0, end)``: the numbers 0 .. end - 1."""
    b.emit(asm.mov64_reg(R1, R10), asm.alu64_imm("add", R1, it))
    b.emit(asm.mov64_imm(R2, 0), asm.mov64_imm(R3, end), asm.kfunc_call(lay.iter_num_new))


def decode(data: bytes) -> list[CgroupProgRecord]:
    """The records of one pass that stand for a program attached with ``BPF_PROG_ATTACH``:
    entries held by a link, and those whose program could not be read (id 0), are left out,
    as is a torn tail (which the kernel never writes)."""
    usable = len(data) - len(data) % RECORD.size
    return [
        CgroupProgRecord(cgroup_id, prog_id, slot, flags)
        for cgroup_id, prog_id, slot, flags, link, _pad in RECORD.iter_unpack(data[:usable])
        if prog_id and not link
    ]


class _IterLinkInfo(ctypes.Structure):
    """``union bpf_iter_link_info``'s ``cgroup`` member."""

    _fields_ = [("order", u32), ("cgroup_fd", u32), ("cgroup_id", u64)]


class _IterLinkCreateAttr(ctypes.Structure):
    """``bpf_attr.link_create`` with ``iter_info`` (5.9), the tail zeroed."""

    _fields_ = [
        ("prog_fd", u32),
        ("target_fd", u32),
        ("attach_type", u32),
        ("flags", u32),
        ("iter_info", u64),
        ("iter_info_len", u32),
        ("_pad", u32),
        ("_tail", u64 * 4),
    ]


def attach_cgroup_iterator(prog: KernelFd, root_fd: int) -> KernelFd:
    """``BPF_LINK_CREATE`` of the iterator on the cgroup ``root_fd`` and its descendants."""
    info = _IterLinkInfo(order=BPF_CGROUP_ITER_DESCENDANTS_PRE, cgroup_fd=root_fd)
    attr = _IterLinkCreateAttr(
        prog_fd=prog.fileno(),
        attach_type=AttachType.TRACE_ITER,
        iter_info=ctypes.addressof(info),
        iter_info_len=ctypes.sizeof(info),
    )
    fd = bpf(Cmd.LINK_CREATE, attr, "iter/cgroup")
    return KernelFd.adopt(fd, "link", link_id)


class CgroupIterator(OwnedFds):
    """The loaded ``iter/cgroup`` program and its link on one cgroup2 hierarchy.  Close it
    (or use ``with``)."""

    def __init__(self, layout: CgroupIterLayout, root: str) -> None:
        self.layout = layout
        self.root = root
        super().__init__()
        try:
            insns = build_program(layout)
            root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                self._load(
                    insns,
                    PROGRAM_NAME,
                    layout.attach_btf_id,
                    lambda prog: attach_cgroup_iterator(prog, root_fd),
                )
            finally:
                os.close(root_fd)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, root: str, *, bounded_loops: bool = False) -> CgroupIterator:
        """Load it with offsets from this kernel's vmlinux BTF, on the hierarchy at ``root``
        (with bounded loops even where ``bpf_iter_num`` exists, when told: tests)."""
        with VmlinuxBtf() as btf:
            layout = CgroupIterLayout.from_btf(btf)
        if bounded_loops:
            layout = replace(layout, iter_num_new=0, iter_num_next=0, iter_num_destroy=0)
        return cls(layout, root)

    @property
    def verified_insns(self) -> int:
        """How many instructions the verifier walked to accept the program (5.16)."""
        info = ProgInfo()
        attr = InfoByFdAttr(
            bpf_fd=self.prog_fd, info_len=ctypes.sizeof(info), info=ctypes.addressof(info)
        )
        bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, PROGRAM_NAME)
        return int(info.verified_insns)

    def read(self) -> list[CgroupProgRecord]:
        """One pass: a record per program attached with ``BPF_PROG_ATTACH``, cgroups in
        pre-order (parents first), each cgroup's slots in order, each slot's programs in
        the order they run."""
        return decode(self.read_raw())

    def attach_type(self, slot: int) -> str:
        """The uapi attach type name of ``slot``."""
        names = self.layout.slot_names
        return names[slot] if slot < len(names) else f"cgroup_slot_{slot}"


__all__ = [
    "BTF_NAMES",
    "RECORD",
    "CgroupIterLayout",
    "CgroupIterator",
    "CgroupProgRecord",
    "build_program",
    "decode",
    "slot_names",
]
