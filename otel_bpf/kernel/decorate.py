"""Owners and maps added to a pass's records, the same way on both sampling paths.

A pass reads each program's counters and static facts; who holds a program and which maps
it uses are separate reads (a procfs scan or the ``iter/task_file`` walk; one
``MAP_GET_FD_BY_ID`` per map), made only when :class:`~otel_bpf.kernel.source.SourceOptions`
asks for them.  The paths differ only in how owners are found, so that is the one thing a
:class:`Decorator` is given.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from otel_bpf.kernel.maps import read_maps
from otel_bpf.kernel.owners import scan_owners
from otel_bpf.kernel.record_builder import RecordExtras
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.records import MapRecord, Owner, ProgramRecord

if TYPE_CHECKING:
    from otel_bpf.kernel.attach_discovery import AttachmentDiscovery

OwnersByProgram = dict[int, tuple[Owner, ...]]


class Decorator:
    """Attaches owners (from ``find_owners``, a procfs scan by default), maps and
    attachments (from ``attachments``, on its own cadence) to records, keeping the very
    record object of a program whose extras did not change."""

    def __init__(
        self,
        find_owners: Callable[[], OwnersByProgram] = scan_owners,
        attachments: AttachmentDiscovery | None = None,
    ) -> None:
        self._find_owners = find_owners
        self._attachments = attachments
        self._lock = threading.Lock()
        self._extras = RecordExtras()

    def decorate(
        self, records: list[ProgramRecord], errors: list[str], options: SourceOptions
    ) -> list[ProgramRecord]:
        """``records`` with what ``options`` asks for; map read failures go to ``errors``."""
        if not (options.owners or options.maps or options.attachments):
            return records
        found: dict[int, MapRecord] | None = None
        if options.maps:
            found, map_errors = read_maps(i for r in records for i in r.map_ids)
            errors.extend(map_errors)
        by_prog = self._find_owners() if options.owners else None
        with self._lock:
            where = None
            if options.attachments:
                if self._attachments is None:
                    # Imported here: a run that never asks for attachments (most) does not
                    # pay the attach-point decoders' import at start-up (about 5 ms).
                    from otel_bpf.kernel.attach_discovery import AttachmentDiscovery

                    self._attachments = AttachmentDiscovery()
                own = self._attachments.own_prog_ids
                if own and not options.include_self:
                    records = [r for r in records if r.id not in own]
                where = self._attachments.get({r.id: r.type for r in records}, errors)
            return self._extras.attach(records, by_prog, found, where)

    def close(self) -> None:
        """Release what the attachment look-ups hold (vmlinux BTF)."""
        with self._lock:
            if self._attachments is not None:
                self._attachments.close()
