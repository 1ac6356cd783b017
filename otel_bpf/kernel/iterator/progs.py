"""The ``iter/bpf_prog`` program: id, type, name, load time and summed stats of every program.

Why the program looks the way it does (verified on 6.18 without ``CONFIG_KALLSYMS_ALL`` and
without ``percpu`` BTF tags):

* ``bpf_per_cpu_ptr(prog->stats, cpu)`` is rejected there (``stats`` is a plain pointer in
  BTF), and per-CPU ksyms such as ``this_cpu_off`` cannot be resolved.  So the per-CPU offsets
  are learned from a map of our own: for a one-element PERCPU_ARRAY,
  ``bpf_map_lookup_percpu_elem(map, &0, cpu)`` (5.19) returns ``pptrs[0] + per_cpu_offset(cpu)``
  and ``pptrs[0]`` is read at ``map + offsetof(struct bpf_array, pptrs)``.  The offsets are
  computed on the first call and kept in an ARRAY map ("state").
* A typed pointer cannot take an unbounded addend, so pointers become integers by spilling
  them to the stack and reading them back with ``bpf_probe_read_kernel`` (a privileged loader
  may pass any value as its source address).
* The kernel sums ``for_each_possible_cpu`` (``bpf_prog_get_stats()``); the possible-CPU list
  is read from sysfs and unrolled into the program, so sparse masks are summed exactly.
* Each CPU's ``struct bpf_prog_stats`` is read with direct, fault-safe loads through the
  ``bpf_rdonly_cast()`` kfunc where vmlinux BTF has it (6.2), else with one
  ``bpf_probe_read_kernel`` per CPU (about 30 ns per CPU per program more).

One 56-byte record per program: ``u32 id, u32 type, char name[16], u64 load_time,
u64 run_time_ns, u64 run_cnt, u64 recursion_misses``.  The per-CPU variant (loaded only when
per-CPU figures are asked for, so the default pass is untouched) follows each record with
``u64 cnt, nsecs, misses`` for every possible CPU, in ``cpus`` order, from the same loads the
sums are made of (so the sums are exactly those of the per-CPU values).  The block is
gathered in the state map's value (the 512-byte stack holds only ~20 CPUs' worth) and written
with a second ``bpf_seq_write``: an object that overflows the seq buffer is rolled back
whole by ``bpf_seq_read()``, so a record and its block are never split.
"""

from __future__ import annotations

import errno
import struct
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import NamedTuple

from otel_bpf.kernel import asm
from otel_bpf.kernel._uapi import Helper, MapType
from otel_bpf.kernel.asm import R0, R1, R2, R3, R6, R7, R8, R9, R10, Builder
from otel_bpf.kernel.errors import BpfUnsupportedError
from otel_bpf.kernel.iterator._common import OwnedFds, probe_read_to_stack, read_iterator
from otel_bpf.kernel.maps import create_owned_map
from otel_bpf.kernel.system import possible_cpus
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf

PROGRAM_NAME = "otel_bpf_progs"

# Native byte order: the program stores the kernel's values as they are.
RECORD = struct.Struct("=II16sQQQQ")

# Stack layout (offsets from R10).
_REC = -56  # the record, 56 bytes
_SCRATCH = -64  # an 8-byte value read back by probe_read_kernel
_SPILL = -72  # a pointer spilled to become an integer
_META = -80  # the bpf_iter_meta pointer, kept across calls
_KEY = -84  # u32 key 0 for the percpu map
_PPTR0 = -96  # pptrs[0] of the percpu map
_STATS = -128  # one CPU's bpf_prog_stats (probe_read variant), 32 bytes


# The record seen as u64 words: [id | type << 32, name, name, load_time, run_time_ns, run_cnt,
# recursion_misses]; the id is u32 number 0 of the record.
_WORDS = RECORD.size // 8
PER_CPU = struct.Struct("=QQQ")
"""One CPU's ``cnt, nsecs, misses`` in the per-CPU variant's block."""
_LOAD_TIME_WORD, _RUN_TIME_WORD, _RUN_CNT_WORD, _MISSES_WORD = 3, 4, 5, 6
assert RECORD.size % 8 == 0 and struct.calcsize("=II16s") == _LOAD_TIME_WORD * 8


class PassColumns:
    """One pass's records by column, undecoded: strided ``memoryview`` slices of the bytes.

    Two passes' ids and load times compare in C, about 2 ns a program, and only the
    columns a caller asks for become Python ints (one C loop each): no tuple, name or bytes
    object per program.  A torn tail, which the kernel never writes, is ignored.
    """

    __slots__ = (
        "ids",
        "load_times",
        "run_times",
        "run_counts",
        "recursion_misses",
        "_words",
        "ncpus",
    )

    def __init__(self, data: bytes, ncpus: int = 0) -> None:
        """``ncpus``: the number of CPUs in each record's per-CPU block (0: none)."""
        size = record_size(ncpus)
        stride = size // 8
        view = memoryview(data)[: len(data) - len(data) % size]
        words = view.cast("Q")
        self.ncpus = ncpus
        self._words = words
        self.ids = view.cast("I")[:: stride * 2]
        self.load_times = words[_LOAD_TIME_WORD::stride]
        self.run_times = words[_RUN_TIME_WORD::stride]
        self.run_counts = words[_RUN_CNT_WORD::stride]
        self.recursion_misses = words[_MISSES_WORD::stride]

    def cpu_column(self, index: int) -> tuple[list[int], list[int], list[int]]:
        """The ``index``-th CPU of every row's per-CPU block, as three columns: run counts,
        run times (ns) and recursion misses, one entry per row."""
        stride = _WORDS + 3 * self.ncpus
        start = _WORDS + 3 * index
        words = self._words
        return (
            words[start::stride].tolist(),
            words[start + 1 :: stride].tolist(),
            words[start + 2 :: stride].tolist(),
        )

    def __len__(self) -> int:
        return len(self.ids)

    def same_programs(self, other: PassColumns) -> bool:
        """The same ids with the same load times, in the same order."""
        return self.ids == other.ids and self.load_times == other.load_times

    def rows_of(self, prog_ids: Iterable[int]) -> list[int]:
        """The row numbers of those of ``prog_ids`` present, ascending."""
        ids = self.ids
        rows = []
        for prog_id in prog_ids:
            row = bisect_left(ids, prog_id)  # the kernel walks in id order
            if row < len(ids) and ids[row] == prog_id:
                rows.append(row)
            elif prog_id in ids:  # only if that order ever changes
                rows.append(ids.tolist().index(prog_id))
        return sorted(rows)

    def counters(self, drop: Sequence[int] = ()) -> tuple[list[int], list[int], list[int]]:
        """Run times, run counts and recursion misses, without the rows in ``drop``
        (ascending)."""
        columns = (
            self.run_times.tolist(),
            self.run_counts.tolist(),
            self.recursion_misses.tolist(),
        )
        for row in reversed(drop):
            for column in columns:
                del column[row]
        return columns


class ProgRecordRaw(NamedTuple):
    """What the iterator reports for one program (a tuple: one is built per program per pass)."""

    id: int
    type_id: int
    name: str
    load_time_ns: int
    run_time_ns: int
    run_cnt: int
    recursion_misses: int


# Every type named below, so that one walk of vmlinux BTF finds them all.
BTF_NAMES = (
    "bpf_iter_bpf_prog",
    "bpf_rdonly_cast",
    "bpf_prog_stats",
    "bpf_iter__bpf_prog",
    "bpf_iter_meta",
    "bpf_prog",
    "bpf_prog_aux",
    "bpf_array",
)


@dataclass(frozen=True, slots=True)
class ProgIterLayout:
    """BTF ids and byte offsets the program is assembled with (all from vmlinux BTF)."""

    attach_btf_id: int  # FUNC bpf_iter_bpf_prog
    rdonly_cast_id: int  # FUNC bpf_rdonly_cast; 0 selects the probe_read variant
    stats_struct_id: int  # STRUCT bpf_prog_stats
    ctx_meta: int
    ctx_prog: int
    meta_seq: int
    prog_type: int
    prog_stats: int
    prog_aux: int
    aux_id: int
    aux_name: int
    aux_load_time: int
    stats_cnt: int
    stats_nsecs: int
    stats_misses: int
    stats_size: int
    array_pptrs: int

    @classmethod
    def from_btf(cls, btf: VmlinuxBtf, *, use_rdonly_cast: bool | None = None) -> ProgIterLayout:
        """Read every id and offset; ``use_rdonly_cast=None`` uses the kfunc when present."""
        if use_rdonly_cast is None:
            use_rdonly_cast = btf.has_func("bpf_rdonly_cast")
        btf.prefetch(BTF_NAMES)
        off = btf.member_offset
        return cls(
            attach_btf_id=btf.func_id("bpf_iter_bpf_prog"),
            rdonly_cast_id=btf.func_id("bpf_rdonly_cast") if use_rdonly_cast else 0,
            stats_struct_id=btf.struct_id("bpf_prog_stats"),
            ctx_meta=off("bpf_iter__bpf_prog", "meta"),
            ctx_prog=off("bpf_iter__bpf_prog", "prog"),
            meta_seq=off("bpf_iter_meta", "seq"),
            prog_type=off("bpf_prog", "type"),
            prog_stats=off("bpf_prog", "stats"),
            prog_aux=off("bpf_prog", "aux"),
            aux_id=off("bpf_prog_aux", "id"),
            aux_name=off("bpf_prog_aux", "name"),
            aux_load_time=off("bpf_prog_aux", "load_time"),
            stats_cnt=off("bpf_prog_stats", "cnt"),
            stats_nsecs=off("bpf_prog_stats", "nsecs"),
            stats_misses=off("bpf_prog_stats", "misses"),
            stats_size=btf.struct_size("bpf_prog_stats"),
            array_pptrs=off("bpf_array", "pptrs"),
        )

    def with_overrides(self, overrides: Mapping[str, int]) -> ProgIterLayout:
        """A copy with some fields replaced (to test the fallback with a wrong offset)."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown layout fields: {sorted(unknown)}")
        return replace(self, **overrides)

    @property
    def variant(self) -> str:
        """``rdonly_cast`` or ``probe_read``."""
        return "rdonly_cast" if self.rdonly_cast_id else "probe_read"


# bpf_seq_read() fills at most PAGE_SIZE << 3 bytes per read() and fails one object larger
# than that with E2BIG (4 KiB pages assumed: the smallest).
_SEQ_OBJECT_MAX = 4096 << 3


def record_size(ncpus: int = 0) -> int:
    """Bytes per program: the record, and its per-CPU block for ``ncpus`` CPUs (0: none)."""
    return RECORD.size + PER_CPU.size * ncpus


def state_size(ncpus: int, per_cpu: bool) -> int:
    """The state map's value: a ready flag, each CPU's offset, the per-CPU block if any."""
    return 8 + 8 * ncpus + (PER_CPU.size * ncpus if per_cpu else 0)


def _exit_if(b: Builder, op: str, reg: int, imm: int) -> None:
    """``if (reg op imm) return 0`` inline: a jump to one shared exit would grow with the
    unrolled per-CPU code and hit the 16-bit jump offset on hosts with many CPUs."""
    negated = {"jeq": "jne", "jne": "jeq"}[op]
    b.emit(asm.jmp_imm(negated, reg, imm, 2), asm.mov64_imm(R0, 0), asm.exit_())


def build_program(
    layout: ProgIterLayout,
    cpus: Sequence[int],
    state_fd: int,
    pcpu_fd: int,
    *,
    per_cpu: bool = False,
) -> list[asm.Insn]:
    """The iterator program for ``cpus``, using the two maps' fds; ``per_cpu`` appends each
    CPU's counters to every record (the state map then has :func:`state_size` room)."""
    lay = layout
    block = 8 + 8 * len(cpus)  # the per-CPU block's offset in the state value
    no_stats = "zero" if per_cpu else "write"
    b = Builder()
    # R6 = ctx, R7 = prog (NULL on the final call), R8 = &state.
    b.emit(asm.mov64_reg(R6, R1))
    b.emit(asm.ldx_mem(8, R7, R6, lay.ctx_prog))
    _exit_if(b, "jeq", R7, 0)
    b.emit(asm.ldx_mem(8, R1, R6, lay.ctx_meta))
    b.emit(asm.stx_mem(8, R10, R1, _META))
    b.emit(asm.ld_map_value(R8, state_fd, 0))
    b.emit(asm.ldx_mem(8, R1, R8, 0))
    b.jmp_imm("jne", R1, 0, "ready")

    # First call: state.cpu_off[i] = lookup_percpu_elem(pcpu, 0, cpus[i]) - pcpu.pptrs[0].
    b.emit(asm.ld_map_fd(R1, pcpu_fd))
    b.emit(asm.stx_mem(8, R10, R1, _SPILL))
    b.emit(asm.mov64_reg(R3, R10), asm.alu64_imm("add", R3, _SPILL))
    probe_read_to_stack(b, _SCRATCH, 8)  # the map's address, as an integer
    _exit_if(b, "jne", R0, 0)
    b.emit(asm.ldx_mem(8, R3, R10, _SCRATCH), asm.alu64_imm("add", R3, lay.array_pptrs))
    probe_read_to_stack(b, _PPTR0, 8)
    _exit_if(b, "jne", R0, 0)
    b.emit(asm.st_mem(4, R10, _KEY, 0))
    for i, cpu in enumerate(cpus):
        b.emit(asm.ld_map_fd(R1, pcpu_fd))
        b.emit(asm.mov64_reg(R2, R10), asm.alu64_imm("add", R2, _KEY), asm.mov64_imm(R3, cpu))
        b.emit(asm.call(Helper.MAP_LOOKUP_PERCPU_ELEM))
        _exit_if(b, "jeq", R0, 0)
        b.emit(asm.stx_mem(8, R10, R0, _SPILL))
        b.emit(asm.mov64_reg(R3, R10), asm.alu64_imm("add", R3, _SPILL))
        probe_read_to_stack(b, _SCRATCH, 8)
        _exit_if(b, "jne", R0, 0)
        b.emit(asm.ldx_mem(8, R1, R10, _SCRATCH), asm.ldx_mem(8, R2, R10, _PPTR0))
        b.emit(asm.alu64_reg("sub", R1, R2), asm.stx_mem(8, R8, R1, 8 + 8 * i))
    b.emit(asm.st_mem(8, R8, 0, 1))

    b.label("ready")
    # Plain BTF loads: id, type, name (two 8-byte loads), load time.
    b.emit(asm.ldx_mem(8, R9, R7, lay.prog_aux))
    b.emit(asm.ldx_mem(4, R1, R9, lay.aux_id), asm.stx_mem(4, R10, R1, _REC))
    b.emit(asm.ldx_mem(4, R1, R7, lay.prog_type), asm.stx_mem(4, R10, R1, _REC + 4))
    b.emit(asm.ldx_mem(8, R1, R9, lay.aux_name), asm.stx_mem(8, R10, R1, _REC + 8))
    b.emit(asm.ldx_mem(8, R1, R9, lay.aux_name + 8), asm.stx_mem(8, R10, R1, _REC + 16))
    b.emit(asm.ldx_mem(8, R1, R9, lay.aux_load_time), asm.stx_mem(8, R10, R1, _REC + 24))
    # Sums: R9 = nsecs, R7 = cnt (prog is no longer needed once stats is read), misses on
    # the stack.  The stats pointer is read as an integer.
    b.emit(asm.st_mem(8, R10, _REC + 48, 0))
    b.emit(asm.mov64_reg(R3, R7), asm.alu64_imm("add", R3, lay.prog_stats))
    probe_read_to_stack(b, _SCRATCH, 8)
    b.emit(asm.mov64_imm(R9, 0), asm.mov64_imm(R7, 0))
    b.jmp_imm("jne", R0, 0, no_stats)
    b.emit(asm.ldx_mem(8, R6, R10, _SCRATCH))
    b.jmp_imm("jeq", R6, 0, no_stats)
    span = max(lay.stats_cnt, lay.stats_nsecs, lay.stats_misses) + 8
    for i in range(len(cpus)):
        b.emit(asm.ldx_mem(8, R3, R8, 8 + 8 * i), asm.alu64_reg("add", R3, R6))
        if lay.rdonly_cast_id:
            b.emit(asm.mov64_reg(R1, R3), asm.mov64_imm(R2, lay.stats_struct_id))
            b.emit(asm.kfunc_call(lay.rdonly_cast_id))
            base, cnt, nsecs, misses = R0, lay.stats_cnt, lay.stats_nsecs, lay.stats_misses
        else:
            probe_read_to_stack(b, _STATS, span)
            base = R10
            cnt, nsecs, misses = (
                _STATS + lay.stats_cnt,
                _STATS + lay.stats_nsecs,
                _STATS + lay.stats_misses,
            )
        b.emit(asm.ldx_mem(8, R1, base, nsecs), asm.alu64_reg("add", R9, R1))
        if per_cpu:
            b.emit(asm.stx_mem(8, R8, R1, block + PER_CPU.size * i + 8))
        b.emit(asm.ldx_mem(8, R1, base, cnt), asm.alu64_reg("add", R7, R1))
        if per_cpu:
            b.emit(asm.stx_mem(8, R8, R1, block + PER_CPU.size * i))
        b.emit(asm.ldx_mem(8, R1, base, misses), asm.ldx_mem(8, R2, R10, _REC + 48))
        if per_cpu:
            b.emit(asm.stx_mem(8, R8, R1, block + PER_CPU.size * i + 16))
        b.emit(asm.alu64_reg("add", R2, R1), asm.stx_mem(8, R10, R2, _REC + 48))
    if per_cpu:
        # No stats to read: zeros, not the previous program's block.
        b.ja("write")
        b.label("zero")
        for off in range(block, block + PER_CPU.size * len(cpus), 8):
            b.emit(asm.st_mem(8, R8, off, 0))

    b.label("write")
    b.emit(asm.stx_mem(8, R10, R9, _REC + 32), asm.stx_mem(8, R10, R7, _REC + 40))
    b.emit(asm.ldx_mem(8, R1, R10, _META), asm.ldx_mem(8, R1, R1, lay.meta_seq))
    b.emit(asm.mov64_reg(R2, R10), asm.alu64_imm("add", R2, _REC))
    b.emit(asm.mov64_imm(R3, RECORD.size), asm.call(Helper.SEQ_WRITE))
    if per_cpu:
        b.emit(asm.ldx_mem(8, R1, R10, _META), asm.ldx_mem(8, R1, R1, lay.meta_seq))
        b.emit(asm.mov64_reg(R2, R8), asm.alu64_imm("add", R2, block))
        b.emit(asm.mov64_imm(R3, PER_CPU.size * len(cpus)), asm.call(Helper.SEQ_WRITE))
    b.emit(asm.mov64_imm(R0, 0), asm.exit_())
    return b.insns()


def decode(data: bytes, ncpus: int = 0) -> list[ProgRecordRaw]:
    """Records of one pass (a torn tail, which the kernel never writes, is ignored); with
    ``ncpus``, records of the per-CPU variant (the blocks are skipped: see
    :meth:`PassColumns.per_cpu`)."""
    size = record_size(ncpus)
    usable = len(data) - len(data) % size
    new = ProgRecordRaw
    return [
        new(pid, ptype, name.split(b"\0", 1)[0].decode(errors="replace"), lt, ns, cnt, m)
        for pid, ptype, name, lt, ns, cnt, m in (
            RECORD.unpack_from(data, off) for off in range(0, usable, size)
        )
    ]


class ProgIterator(OwnedFds):
    """The loaded ``iter/bpf_prog`` program and its link.  Close it (or use ``with``).

    Nothing is pinned: the maps, program and link live as long as this object's fds (and
    die with the process).
    """

    def __init__(
        self,
        layout: ProgIterLayout,
        cpus: Sequence[int] | None = None,
        *,
        per_cpu: bool = False,
    ) -> None:
        self.layout = layout
        self.cpus = list(possible_cpus() if cpus is None else cpus)
        self.per_cpu = per_cpu
        self.ncpus = len(self.cpus) if per_cpu else 0
        """CPUs in each record's per-CPU block (0 without one)."""
        if record_size(self.ncpus) > _SEQ_OBJECT_MAX:
            raise BpfUnsupportedError(
                errno.E2BIG,
                f"{len(self.cpus)} possible CPUs: a per-CPU record of "
                f"{record_size(self.ncpus)} bytes exceeds the iterator's {_SEQ_OBJECT_MAX}",
            )
        super().__init__()
        try:
            state = self._keep(
                create_owned_map(
                    MapType.ARRAY, 4, state_size(len(self.cpus), per_cpu), 1, "otel_bpf_state"
                )
            )
            pcpu = self._keep(create_owned_map(MapType.PERCPU_ARRAY, 4, 8, 1, "otel_bpf_pcpu"))
            try:
                insns = build_program(
                    layout, self.cpus, state.fileno(), pcpu.fileno(), per_cpu=per_cpu
                )
            except ValueError as err:  # a jump past 32767 slots: about 1,900 CPUs
                raise BpfUnsupportedError(
                    errno.E2BIG, f"{len(self.cpus)} possible CPUs: {err}"
                ) from None
            self._load(insns, PROGRAM_NAME, layout.attach_btf_id)
        except BaseException:
            self.close()
            raise

    def read(self) -> list[ProgRecordRaw]:
        """One pass: a record per program loaded right now (this one included)."""
        return decode(read_iterator(self.link), self.ncpus)
