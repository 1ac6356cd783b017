"""``open_source(mode, options)``: the program source every consumer samples through.

It sits above both paths (:mod:`otel_bpf.kernel.programs`, :mod:`otel_bpf.kernel.iterator`),
which only know the interface in :mod:`otel_bpf.kernel.source`.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping

from otel_bpf.kernel.errors import BpfPermissionError, BpfUnsupportedError
from otel_bpf.kernel.iterator.selfcheck import IteratorUnavailableError, open_iterator_source
from otel_bpf.kernel.programs import SyscallSource
from otel_bpf.kernel.source import (
    MODES,
    PER_CPU_NEEDS_ITERATOR,
    Mode,
    ProgramSource,
    SourceOptions,
)

__all__ = ["open_source"]

_log = logging.getLogger("otel_bpf.sampling")


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
        if options.per_cpu:
            raise BpfUnsupportedError(
                errno.EOPNOTSUPP, f"{PER_CPU_NEEDS_ITERATOR}; the iterator is unavailable: {reason}"
            ) from err
        # Without the privileges to load it, the syscall path lacks them too (both need
        # CAP_SYS_ADMIN here): its first pass reports that, once, in its own words.
        denied = isinstance(err.__cause__, (BpfPermissionError, PermissionError))
        level = logging.INFO if denied else logging.WARNING
        _log.log(level, "sampling path: syscall (BPF iterator unavailable: %s)", reason)
        return SyscallSource(options)
    reason = f"iter/bpf_prog ({source.variant} variant) agrees with the syscall path"
    _log.info("sampling path: iterator (%s)", reason)
    return source
