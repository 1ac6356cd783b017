"""The iterator sampling path: ``IteratorSource.read()`` returns what the syscall path does.

Per pass, the counters (run time, run count, recursion misses), id and load time of every
program come from one ``iter/bpf_prog`` read.  The fields that do not change while a program
lives (type, name, tag, uid, sizes, verified instructions, map ids, BTF id and full name,
memlock) are read through the syscall path (:func:`~otel_bpf.kernel.programs.read_one`) once
per new program and cached by (id, load time), so a pass costs one ``ITER_CREATE`` + a few
``read()`` calls however many programs are loaded.

An :class:`IteratorSource` is three pieces: it owns the iterator programs' fds (the
``iter/bpf_prog`` walk, and the ``iter/task_file`` walk for owners, loaded when first asked),
a :class:`~otel_bpf.kernel.iterator.merge.PassMerger` turns each walk into records reusing
the previous pass's, and a :class:`~otel_bpf.kernel.decorate.Decorator` adds owners and maps.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace

from otel_bpf.kernel.decorate import Decorator
from otel_bpf.kernel.errors import BpfError
from otel_bpf.kernel.iterator.merge import PassMerger
from otel_bpf.kernel.iterator.owners import BTF_NAMES as OWNERS_BTF_NAMES
from otel_bpf.kernel.iterator.owners import OwnersIterator, OwnersLayout
from otel_bpf.kernel.iterator.progs import BTF_NAMES as PROG_BTF_NAMES
from otel_bpf.kernel.iterator.progs import (
    ProgIterator,
    ProgIterLayout,
    ProgRecordRaw,
)
from otel_bpf.kernel.source import ReadResult, SamplingPath, SourceOptions
from otel_bpf.kernel.vmlinux_btf import VmlinuxBtf
from otel_bpf.records import Owner

_log = logging.getLogger(__name__)


class IteratorSource:
    """The iterator path: a :class:`~otel_bpf.kernel.source.ProgramSource` that owns the
    iterator programs' fds (close it, or use it as a context manager).

    ``layout_overrides`` and ``owners_layout_overrides`` replace ids/offsets read from BTF
    (tests use them to make the self-check or the owners calibration fail);
    ``use_rdonly_cast`` forces a variant (None: the kfunc when present).
    """

    path: SamplingPath = "iterator"

    def __init__(
        self,
        options: SourceOptions | None = None,
        *,
        layout_overrides: Mapping[str, int] | None = None,
        owners_layout_overrides: Mapping[str, int] | None = None,
        use_rdonly_cast: bool | None = None,
        cpus: Sequence[int] | None = None,
        merger: PassMerger | None = None,
    ) -> None:
        self._options = options or SourceOptions()
        with VmlinuxBtf() as btf:
            btf.prefetch(PROG_BTF_NAMES + OWNERS_BTF_NAMES)
            layout = ProgIterLayout.from_btf(btf, use_rdonly_cast=use_rdonly_cast)
            try:
                self._owners_layout: OwnersLayout | None = OwnersLayout.from_btf(btf)
                self._owners_error: str | None = None
            except BpfError as err:
                self._owners_layout, self._owners_error = None, str(err)
        if layout_overrides:
            layout = layout.with_overrides(layout_overrides)
        if owners_layout_overrides and self._owners_layout is not None:
            self._owners_layout = replace(self._owners_layout, **owners_layout_overrides)
        self.layout = layout
        self._lock = threading.Lock()
        self._cpus = cpus
        self._progs = ProgIterator(layout, cpus)
        # Loaded on the first per-CPU pass: the default pass keeps its smaller program.
        self._progs_per_cpu: ProgIterator | None = None
        self._owners_iter: OwnersIterator | None = None
        self._merger = merger or PassMerger()
        self._decorator = Decorator(self._owners_pass)
        self._closed = False

    # -- life cycle ----------------------------------------------------------------------

    @property
    def options(self) -> SourceOptions:
        """What :meth:`read` reads when not told otherwise."""
        return self._options

    @property
    def variant(self) -> str:
        """``rdonly_cast`` or ``probe_read``."""
        return self.layout.variant

    @property
    def self_ids(self) -> frozenset[int]:
        """Ids of this source's own iterator programs."""
        ids = {self._progs.prog_id}
        if self._progs_per_cpu is not None:
            ids.add(self._progs_per_cpu.prog_id)
        if self._owners_iter is not None:
            ids.add(self._owners_iter.prog_id)
        return frozenset(ids)

    @property
    def owners_path(self) -> str:
        """``iterator`` once the task_file program is loaded, else ``procfs``."""
        return "iterator" if self._owners_iter is not None else "procfs"

    def close(self) -> None:
        """Unload the iterator programs (idempotent)."""
        with self._lock:
            self._closed = True
            self._progs.close()
            if self._progs_per_cpu is not None:
                self._progs_per_cpu.close()
            if self._owners_iter is not None:
                self._owners_iter.close()
            self._decorator.close()

    def __enter__(self) -> IteratorSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- passes --------------------------------------------------------------------------

    def read_raw(self) -> list[ProgRecordRaw]:
        """One iterator pass, undecorated: what the kernel walk reports (own programs too)."""
        with self._lock:
            return self._progs.read()

    def read(self, options: SourceOptions | None = None) -> ReadResult:
        """One pass over every program, sorted by id (``options`` default to the source's)."""
        options = options or self._options
        with self._lock:
            if self._closed:
                raise BpfError(errno.EBADF, "the iterator source is closed")
            progs = self._per_cpu_locked() if options.per_cpu else self._progs
            skip = frozenset() if options.include_self else self.self_ids
            # The kernel reads every program's counters while the iterator is read.
            started = time.monotonic()
            raw = progs.read_raw()
            read_at = (started + time.monotonic()) / 2
            records, errors = self._merger.merge(
                raw, options.memlock, skip, progs.cpus if options.per_cpu else None
            )
        return ReadResult(self._decorator.decorate(records, errors, options), errors, read_at)

    def _per_cpu_locked(self) -> ProgIterator:
        if self._progs_per_cpu is None:
            self._progs_per_cpu = ProgIterator(self.layout, self._cpus, per_cpu=True)
        return self._progs_per_cpu

    def _owners_pass(self) -> dict[int, tuple[Owner, ...]]:
        with self._lock:
            return self._owners_locked()

    def _owners_locked(self) -> dict[int, tuple[Owner, ...]]:
        if self._owners_iter is None and self._owners_error is None:
            assert self._owners_layout is not None
            try:
                self._owners_iter = OwnersIterator(self._owners_layout)
            except (BpfError, OSError) as err:
                self._owners_error = str(err).splitlines()[0]
                _log.warning(
                    "process owners: scanning /proc (iter/task_file unavailable: %s)",
                    self._owners_error,
                )
        if self._owners_iter is not None:
            try:
                return self._owners_iter.owners()
            except (BpfError, OSError) as err:
                # Once, then /proc for good: a warning per pass would flood the log.
                self._owners_error = str(err)
                self._owners_iter.close()
                self._owners_iter = None
                _log.warning("process owners: scanning /proc (iter/task_file read failed: %s)", err)
        from otel_bpf.kernel.owners import scan_owners

        return scan_owners()
