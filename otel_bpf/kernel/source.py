"""A pass over every BPF program, whichever way the kernel is read: the one interface above it.

Two paths read the same records.  The syscall path (:mod:`otel_bpf.kernel.programs`) asks the
kernel about each program in turn; the iterator path (:mod:`otel_bpf.kernel.iterator`) reads
every program's counters in one ``iter/bpf_prog`` walk and is several times cheaper, where
the kernel allows it.  :func:`open_source` picks one for every consumer (the command line,
the plugin, the instrumentor, a sampler left to choose), checks the iterator against the
syscall path before trusting it, and says which it took; :class:`SourceOptions` says what a
pass reads besides the counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from otel_bpf.records import ProgramRecord

__all__ = [
    "MODES",
    "PER_CPU_NEEDS_ITERATOR",
    "Mode",
    "ProgramSource",
    "ReadResult",
    "SamplingPath",
    "SourceOptions",
]

SamplingPath = Literal["iterator", "syscall"]
"""The way a source reads the kernel (the ``bpf.sampling.path`` resource attribute)."""

Mode = Literal["auto", "iterator", "syscall"]
"""What ``open_source`` is asked for: a path, or ``auto`` (the iterator where it works)."""

MODES: tuple[Mode, ...] = ("auto", "iterator", "syscall")


@dataclass(frozen=True)
class SourceOptions:
    """What a pass reads besides each program's counters and static facts."""

    owners: bool = False
    """The processes holding each program (``ProgramRecord.owners``)."""
    maps: bool = False
    """The maps each program uses (``ProgramRecord.maps``)."""
    attachments: bool = False
    """Where each program is attached (``ProgramRecord.attachments``), from the BPF links,
    netlink, cgroups and the other sources, re-read every 10 s or when the set of programs changes
    (:class:`~otel_bpf.kernel.attach_discovery.AttachmentDiscovery`), not every pass."""
    memlock: bool = True
    """Each program's locked memory from fdinfo (``ProgramRecord.memlock_bytes``)."""
    include_self: bool = False
    """The source's own iterator programs too (the self-check compares them): the iterator
    path's, and the one the attachment discovery loads to find programs on sockets."""
    per_cpu: bool = False
    """Each program's counters on every possible CPU (``ProgramRecord.per_cpu``).  Only the
    iterator path can read them: the syscall path refuses with :data:`PER_CPU_NEEDS_ITERATOR`."""


PER_CPU_NEEDS_ITERATOR = (
    "per-CPU figures need the iterator sampling path (iter/bpf_prog): "
    "the syscall path (BPF_OBJ_GET_INFO_BY_FD) reports only each program's totals"
)
"""Why the syscall path refuses ``SourceOptions(per_cpu=True)``."""


@dataclass(frozen=True)
class ReadResult:
    """The programs of one pass, sorted by id, and what went wrong on the way."""

    records: list[ProgramRecord]
    errors: list[str] = field(default_factory=list)
    read_at: float | None = None
    """``time.monotonic()`` seconds at the middle of the counter reads, or None (a source that
    does not say; the sampler then stamps the pass itself).  Rates divide by the time between
    two passes' ``read_at``: stamped where the counters were read, not after the work that
    follows (owners, maps, decoding), whose length varies from pass to pass."""


class ProgramSource(Protocol):
    """One pass over every program per :meth:`read`; holds kernel objects until closed."""

    @property
    def path(self) -> SamplingPath:
        """The way this source reads the kernel."""
        ...

    @property
    def options(self) -> SourceOptions:
        """What :meth:`read` reads when not told otherwise."""
        ...

    def read(self, options: SourceOptions | None = None) -> ReadResult:
        """One pass (``options`` default to :attr:`options`); per-program failures are in
        ``errors``, the pass goes on.  Raises ``BpfPermissionError`` without CAP_SYS_ADMIN."""
        ...

    def close(self) -> None:
        """Release the kernel objects this source holds (idempotent)."""
        ...

    def __enter__(self) -> ProgramSource: ...

    def __exit__(self, *exc: object) -> None: ...
