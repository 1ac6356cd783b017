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

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping

    from otel_bpf.records import ProgramRecord

__all__ = [
    "MODES",
    "Mode",
    "ProgramSource",
    "ReadResult",
    "SamplingPath",
    "SourceOptions",
    "open_source",
]

_log = logging.getLogger("otel_bpf.sampling")

SamplingPath = Literal["iterator", "syscall"]
"""The way a source reads the kernel (the ``bpf.sampling.path`` resource attribute)."""

Mode = Literal["auto", "iterator", "syscall"]
"""What :func:`open_source` is asked for: a path, or ``auto`` (the iterator where it works)."""

MODES: tuple[Mode, ...] = ("auto", "iterator", "syscall")


@dataclass(frozen=True)
class SourceOptions:
    """What a pass reads besides each program's counters and static facts."""

    owners: bool = False
    """The processes holding each program (``ProgramRecord.owners``)."""
    maps: bool = False
    """The maps each program uses (``ProgramRecord.maps``)."""
    memlock: bool = True
    """Each program's locked memory from fdinfo (``ProgramRecord.memlock_bytes``)."""
    include_self: bool = False
    """The iterator path's own programs too (the self-check compares them)."""


@dataclass(frozen=True)
class ReadResult:
    """The programs of one pass, sorted by id, and what went wrong on the way."""

    records: list[ProgramRecord]
    errors: list[str] = field(default_factory=list)


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


def open_source(
    mode: Mode = "auto",
    options: SourceOptions | None = None,
    *,
    layout_overrides: Mapping[str, int] | None = None,
    use_rdonly_cast: bool | None = None,
) -> ProgramSource:
    """The program source for ``mode``, its path logged once with the reason.

    ``syscall`` always gives the syscall path.  ``iterator`` gives the iterator path,
    self-checked against the syscall path, or raises
    :class:`~otel_bpf.kernel.iterator.selfcheck.IteratorUnavailableError`.  ``auto`` tries the
    iterator and falls back to the syscall path with one warning that says why.
    ``layout_overrides`` and ``use_rdonly_cast`` reach the iterator's layout (tests make
    the self-check fail with them).
    """
    from otel_bpf.kernel.iterator.selfcheck import IteratorUnavailableError, open_iterator_source
    from otel_bpf.kernel.programs import SyscallSource

    if mode not in MODES:
        raise ValueError(f"sampling path must be one of {', '.join(MODES)}, got {mode!r}")
    options = options or SourceOptions()
    if mode == "syscall":
        _log.info("sampling path: syscall (chosen by option)")
        return SyscallSource(options)
    try:
        source = open_iterator_source(
            options, layout_overrides=layout_overrides, use_rdonly_cast=use_rdonly_cast
        )
    except IteratorUnavailableError as err:
        if mode == "iterator":
            raise
        reason = err.strerror or str(err)
        _log.warning("sampling path: syscall (BPF iterator unavailable: %s)", reason)
        return SyscallSource(options)
    reason = f"iter/bpf_prog ({source.variant} variant) agrees with the syscall path"
    _log.info("sampling path: iterator (%s)", reason)
    return source
