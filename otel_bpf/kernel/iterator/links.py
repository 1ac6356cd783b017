"""The ``iter/bpf_link`` program (5.19): id, type, program and target state of every link.

The link walk (:class:`otel_bpf.kernel.attach.LinkWalk`) reads this once per discovery and
spends ``bpf(2)`` calls (fd by id, info, name, close: about 18 µs a link) only on the links
that are new or whose answer may have changed since the last discovery.

One 40-byte record per link: ``u32 id, u32 type, u32 prog_id, u32 netns, u64 state,
char name[16]``.  A link's
type and target are fixed when it is created; what can change afterwards is its program
(``BPF_LINK_UPDATE``: ``prog_id``) and, for the link types of :data:`STATE_CHAINS`, its target
(detached by ``BPF_LINK_DETACH``, or by the device, cgroup or namespace going away; a
struct_ops or sockmap link's map).  ``state`` is the value the kernel's ``fill_link_info``
reports for that target, read the same way it reads it:

* xdp, tcx, netkit: ``link->dev ? link->dev->ifindex : 0`` (a device moved to another
  namespace may change its index);
* struct_ops, sockmap: ``link->map ? link->map->id : 0``;
* netns: ``link->net ? link->net->ns.inum : 0``;
* cgroup: ``link->cgroup != NULL`` (the id of a cgroup never changes; detach clears it).

Other link types get 0.  For xdp, tcx and netkit links the record also names the device as
the kernel knows it: ``dev->name`` and the inode of its network namespace
(``dev_net(dev)->ns.inum``), so that a device in another namespace is named without visiting
that namespace (an index alone means nothing outside its namespace).  The container
structs (``struct bpf_xdp_link`` ...) are private to their .c files, so the fields past
``struct bpf_link`` are read with ``bpf_probe_read_kernel`` from the link's address (an integer, see
:mod:`otel_bpf.kernel.iterator.progs`); a link type whose struct vmlinux BTF lacks (netkit
built as a module) has no chain, and the walk asks the kernel about those links every time.
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass, field
from typing import NamedTuple

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import LinkType
from otel_bpf.kernel.asm import R0, R1, R3, R6, R7, R8, R9, R10, Builder
from otel_bpf.kernel.iterator._common import (
    OwnedFds,
    probe_read_to_stack,
    read_iterator,
    seq_write_from_stack,
)
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf, VmlinuxBtfError

PROGRAM_NAME = "otel_bpf_links"

# Native byte order: the program stores the kernel's values as they are.
RECORD = struct.Struct("=IIIIQ16s")
_NAME_SIZE = 16  # IFNAMSIZ

# Stack layout (offsets from R10).
_REC = -40  # the record, 40 bytes
_SCRATCH = -48  # an 8-byte value read back by probe_read_kernel
_SPILL = -56  # the link pointer, spilled to become an integer
_DEVICE_TYPES = frozenset({LinkType.XDP, LinkType.TCX, LinkType.NETKIT})

FLAG = -1
"""Second offset of a chain whose state is only whether the pointer is set."""

# link type -> (container struct, pointer member, struct the pointer leads to, its member
# path) whose value fill_link_info reports; None: whether the pointer is set.
_CHAINS: dict[int, tuple[str, str, str | None, tuple[tuple[str, str], ...]]] = {
    LinkType.XDP: ("bpf_xdp_link", "dev", "net_device", (("net_device", "ifindex"),)),
    LinkType.TCX: ("tcx_link", "dev", "net_device", (("net_device", "ifindex"),)),
    LinkType.NETKIT: ("netkit_link", "dev", "net_device", (("net_device", "ifindex"),)),
    LinkType.STRUCT_OPS: ("bpf_struct_ops_link", "map", "bpf_map", (("bpf_map", "id"),)),
    LinkType.SOCKMAP: ("sockmap_link", "map", "bpf_map", (("bpf_map", "id"),)),
    LinkType.NETNS: ("bpf_netns_link", "net", "net", (("net", "ns"), ("ns_common", "inum"))),
    LinkType.CGROUP: ("bpf_cgroup_link", "cgroup", None, ()),
}

BTF_NAMES = (
    "bpf_iter_bpf_link",
    "bpf_iter__bpf_link",
    "bpf_iter_meta",
    "bpf_link",
    "bpf_prog",
    "bpf_prog_aux",
    "net_device",
    "bpf_map",
    "net",
    "ns_common",
    *(chain[0] for chain in _CHAINS.values()),
)


class LinkRecord(NamedTuple):
    """What the iterator reports for one link."""

    id: int
    type: int
    prog_id: int
    state: int
    netns: int = 0
    """The network namespace inode of an xdp, tcx or netkit link's device (0: none)."""
    device: str = ""
    """That device's name (empty: none)."""


@dataclass(frozen=True)
class LinkIterLayout:
    """BTF ids and byte offsets the program is assembled with (all from vmlinux BTF)."""

    attach_btf_id: int  # FUNC bpf_iter_bpf_link
    ctx_meta: int
    ctx_link: int
    meta_seq: int
    link_id: int
    link_type: int
    link_prog: int
    prog_aux: int
    aux_id: int
    chains: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Link type -> (offset of the target pointer in the link's struct, offset of the u32
    value behind it, or :data:`FLAG`)."""
    device: tuple[int, int, int] | None = None
    """``(net_device.name, net_device.nd_net, net.ns.inum)`` offsets: a device link's name
    and namespace; None when BTF lacks one (those links are named by visiting namespaces)."""

    @classmethod
    def from_btf(cls, btf: VmlinuxBtf) -> LinkIterLayout:
        """Read every id and offset; raises :class:`VmlinuxBtfError` without the iterator."""
        btf.prefetch(BTF_NAMES)
        off = btf.member_offset
        chains: dict[int, tuple[int, int]] = {}
        for link_type, (container, pointer, _target, path) in _CHAINS.items():
            try:
                # The container starts with its struct bpf_link: the iterator's pointer to
                # the link is the container's address.
                if off(container, "link") != 0:
                    continue
                value = sum(off(s, m) for s, m in path) if path else FLAG
                chains[int(link_type)] = (off(container, pointer), value)
            except VmlinuxBtfError:
                continue  # not in this kernel's BTF: those links are re-read every time
        device = None
        with contextlib.suppress(VmlinuxBtfError):
            # possible_net_t holds only ``struct net *net`` (with CONFIG_NET_NS, as every
            # distribution builds): the pointer is at the member's own offset.
            device = (
                off("net_device", "name"),
                off("net_device", "nd_net"),
                off("net", "ns") + off("ns_common", "inum"),
            )
        return cls(
            attach_btf_id=btf.func_id("bpf_iter_bpf_link"),
            ctx_meta=off("bpf_iter__bpf_link", "meta"),
            ctx_link=off("bpf_iter__bpf_link", "link"),
            meta_seq=off("bpf_iter_meta", "seq"),
            link_id=off("bpf_link", "id"),
            link_type=off("bpf_link", "type"),
            link_prog=off("bpf_link", "prog"),
            prog_aux=off("bpf_prog", "aux"),
            aux_id=off("bpf_prog_aux", "id"),
            chains=chains,
            device=device,
        )


def _device_fields(b: Builder, ifindex: int, device: tuple[int, int, int]) -> None:
    """With R3 = the device: its ifindex (the state), name and namespace inode into the
    record.  probe_read_kernel zeroes what it cannot read, so a failed read leaves 0."""
    name, nd_net, inum = device
    b.emit(asm.mov64_reg(R9, R3))  # the link's address is not needed past this point
    b.emit(asm.alu64_imm("add", R3, ifindex))
    probe_read_to_stack(b, _REC + 16, 4)
    b.emit(asm.mov64_reg(R3, R9), asm.alu64_imm("add", R3, name))
    probe_read_to_stack(b, _REC + 24, _NAME_SIZE)
    b.emit(asm.mov64_reg(R3, R9), asm.alu64_imm("add", R3, nd_net))
    probe_read_to_stack(b, _SCRATCH, 8)
    b.jmp_imm("jne", R0, 0, "write")
    b.emit(asm.ldx_mem(8, R3, R10, _SCRATCH))
    b.jmp_imm("jeq", R3, 0, "write")
    b.emit(asm.alu64_imm("add", R3, inum))
    probe_read_to_stack(b, _REC + 12, 4)


def build_program(layout: LinkIterLayout) -> list[asm.Insn]:
    """The iterator program."""
    lay = layout
    b = Builder()
    # R6 = ctx, R7 = link (NULL on the final call), R8 = type, R9 = the link's address.
    b.emit(asm.mov64_reg(R6, R1))
    b.emit(asm.ldx_mem(8, R7, R6, lay.ctx_link))
    b.jmp_imm("jeq", R7, 0, "out")
    for at in range(_REC + 8, 0, 8):
        b.emit(asm.st_mem(8, R10, at, 0))
    b.emit(asm.ldx_mem(4, R1, R7, lay.link_id), asm.stx_mem(4, R10, R1, _REC))
    b.emit(asm.ldx_mem(4, R8, R7, lay.link_type), asm.stx_mem(4, R10, R8, _REC + 4))
    # link->prog->aux->id: plain BTF loads, fault-safe (a NULL reads as 0).
    b.emit(asm.ldx_mem(8, R1, R7, lay.link_prog))
    b.jmp_imm("jeq", R1, 0, "no_prog")
    b.emit(asm.ldx_mem(8, R1, R1, lay.prog_aux))
    b.jmp_imm("jeq", R1, 0, "no_prog")
    b.emit(asm.ldx_mem(4, R1, R1, lay.aux_id), asm.stx_mem(4, R10, R1, _REC + 8))
    b.label("no_prog")
    if lay.chains:
        # The link's address as an integer: constant offsets past struct bpf_link are then
        # plain arithmetic for probe_read_kernel.
        b.emit(asm.stx_mem(8, R10, R7, _SPILL))
        b.emit(asm.mov64_reg(R3, R10), asm.alu64_imm("add", R3, _SPILL))
        probe_read_to_stack(b, _SCRATCH, 8)
        b.jmp_imm("jne", R0, 0, "write")
        b.emit(asm.ldx_mem(8, R9, R10, _SCRATCH))
        for link_type, (pointer, value) in sorted(lay.chains.items()):
            skip = f"not_{link_type}"
            b.jmp_imm("jne", R8, link_type, skip)
            b.emit(asm.mov64_reg(R3, R9), asm.alu64_imm("add", R3, pointer))
            probe_read_to_stack(b, _SCRATCH, 8)
            b.jmp_imm("jne", R0, 0, "write")
            b.emit(asm.ldx_mem(8, R3, R10, _SCRATCH))
            b.jmp_imm("jeq", R3, 0, "write")
            if value == FLAG:
                b.emit(asm.st_mem(8, R10, _REC + 16, 1))
            elif link_type in _DEVICE_TYPES and lay.device is not None:
                _device_fields(b, value, lay.device)
            else:
                b.emit(asm.alu64_imm("add", R3, value))
                probe_read_to_stack(b, _REC + 16, 4)  # the upper half stays 0
                b.jmp_imm("jeq", R0, 0, "write")
                b.emit(asm.st_mem(8, R10, _REC + 16, 0))
            b.ja("write")
            b.label(skip)
    b.label("write")
    seq_write_from_stack(b, lay.ctx_meta, lay.meta_seq, _REC, RECORD.size)
    b.label("out")
    b.emit(asm.mov64_imm(R0, 0), asm.exit_())
    return b.insns()


def decode(data: bytes) -> list[LinkRecord]:
    """Records of one pass (a torn tail, which the kernel never writes, is ignored)."""
    return [LinkRecord(*t) for t in record_tuples(data)]


def record_tuples(data: bytes) -> list[tuple[int, int, int, int, int, str]]:
    """:func:`decode` as plain ``(id, type, prog_id, state, netns, device)`` tuples."""
    usable = len(data) - len(data) % RECORD.size
    return [
        (link_id, link_type, prog_id, state, netns, _text(name) if netns else "")
        for link_id, link_type, prog_id, netns, state, name in RECORD.iter_unpack(data[:usable])
    ]


def _text(name: bytes) -> str:
    # Untrusted, kept raw: as rtnetlink gives a name (otel_bpf.kernel.netlink.text).
    return name.split(b"\0", 1)[0].decode(errors="replace")


class LinkIterator(OwnedFds):
    """The loaded ``iter/bpf_link`` program and its link.  Close it (or use ``with``)."""

    def __init__(self, layout: LinkIterLayout) -> None:
        self.layout = layout
        super().__init__()
        try:
            insns = build_program(layout)
            self._load(insns, PROGRAM_NAME, layout.attach_btf_id)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls) -> LinkIterator:
        """Load it with offsets from this kernel's vmlinux BTF."""
        with VmlinuxBtf() as btf:
            return cls(LinkIterLayout.from_btf(btf))

    def read(self) -> list[LinkRecord]:
        """One pass: a record per link present right now (this iterator's own included), in
        id order."""
        return decode(read_iterator(self.link))

    def read_tuples(self) -> list[tuple[int, int, int, int, int, str]]:
        """:meth:`read` as plain ``(id, type, prog_id, state, netns, device)`` tuples
        (cheaper to make)."""
        return record_tuples(read_iterator(self.link))
