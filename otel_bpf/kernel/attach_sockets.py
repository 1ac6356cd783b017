"""The ``sockets`` attach-point source: programs attached to processes' sockets.

Socket filters (``SO_ATTACH_BPF``) and reuseport programs (``SO_ATTACH_REUSEPORT_EBPF``) are
found by the ``iter/task_file`` program of :mod:`otel_bpf.kernel.iterator.sockets`, which is
loaded the first time a discovery sees a program that could be attached so (a
``socket_filter`` or ``sk_reuseport`` program), and then kept: each later discovery is one
read of a new iterator fd.  A kernel that cannot load it (no ``bpf_sock_from_file``, a
missing BTF member) fails the same way on every later discovery without trying again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from otel_bpf.kernel._uapi import AttachType, attach_type_name
from otel_bpf.kernel.errors import BpfError
from otel_bpf.kernel.iterator.sockets import (
    KIND_FILTER,
    SocketProgram,
    SocketsIterator,
    decode_record,
    records,
)
from otel_bpf.records import Attachment

if TYPE_CHECKING:
    from otel_bpf.kernel.attach_discovery import DiscoveryContext

SOCKET_PROG_TYPES = frozenset({"socket_filter", "sk_reuseport"})
"""Program types (bpftool's names) that ``SO_ATTACH_BPF``/``SO_ATTACH_REUSEPORT_EBPF`` take."""

_MISSING: Any = object()
_REUSEPORT_TYPES = (AttachType.SK_REUSEPORT_SELECT, AttachType.SK_REUSEPORT_SELECT_OR_MIGRATE)


def attachment(found: SocketProgram) -> Attachment:
    """The attachment one socket record stands for.

    A reuseport program is named by the attach type an ``sk_reuseport`` program was loaded
    for (``sk_reuseport_select``, or ``..._select_or_migrate`` when it may also pick the
    socket a closing listener's requests move to); a ``socket_filter`` program run as a
    reuseport selector was loaded for no attach type and shows as ``sk_reuseport_select``,
    the hook it serves.  A socket's own filter has no attach type.
    """
    if found.kind == KIND_FILTER:
        attach_type = None
    elif found.attach_type in _REUSEPORT_TYPES:
        attach_type = attach_type_name(found.attach_type)
    else:
        attach_type = attach_type_name(AttachType.SK_REUSEPORT_SELECT)
    return Attachment(
        kind="socket",
        via="socket",
        link_id=None,
        attach_type=attach_type,
        target=f"pid {found.pid} fd {found.fd}",
        pid=found.pid,
        fd=found.fd,
        comm=found.comm,
    )


_Entry = tuple[tuple[int, int, int, int], int, Attachment]
"""A record's (pid, fd, kind, program id), program id and attachment."""


class SocketSource:
    """The source's state: the iterator, loaded when first needed, and the last discovery's
    attachments.  :meth:`read` is the :class:`~otel_bpf.kernel.attach_discovery.Source`
    callable; :meth:`close` unloads.

    The walk itself is cheap (about a microsecond a socket); what costs is making Python
    objects of its records, a few microseconds each.  Sockets and their programs mostly stay
    from one discovery to the next, so each record's attachment is kept by the record's
    bytes and reused while the record comes back, and a walk whose output did not change at
    all returns the last result as it is.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._iterator: SocketsIterator | None = None
        self._error: BpfError | None = None
        self._raw: bytes | None = None
        self._result: dict[int, list[Attachment]] = {}
        # Record bytes -> (sort key, program id, attachment); None: a record to skip.
        self._known: dict[bytes, _Entry | None] = {}

    def read(self, ctx: DiscoveryContext) -> Mapping[int, Iterable[Attachment]]:
        if SOCKET_PROG_TYPES.isdisjoint(ctx.programs.values()):
            return {}  # nothing could be attached to a socket: no walk
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._iterator is None:
                try:
                    self._iterator = SocketsIterator()
                except BpfError as err:
                    self._error = err
                    raise
            return self._attachments(self._iterator.read_raw())

    def _attachments(self, raw: bytes) -> dict[int, list[Attachment]]:
        if raw == self._raw:
            return self._result
        known: dict[bytes, _Entry | None] = {}
        before = self._known
        for record in records(raw):
            if record in known:
                continue  # a thread with a file table of its own: the same record again
            entry = before.get(record, _MISSING)
            if entry is _MISSING:
                found = decode_record(record)
                entry = None
                if found is not None:
                    key = (found.pid, found.fd, found.kind, found.prog_id)
                    entry = (key, found.prog_id, attachment(found))
            known[record] = entry
        # Once per (process, fd, kind, program), as decode() gives them, in that order.
        by_key: dict[tuple[int, int, int, int], _Entry] = {}
        for entry in known.values():
            if entry is not None:
                by_key.setdefault(entry[0], entry)
        result: dict[int, list[Attachment]] = {}
        for key in sorted(by_key):
            _, prog_id, a = by_key[key]
            result.setdefault(prog_id, []).append(a)
        self._raw, self._result, self._known = raw, result, known
        return result

    def own_programs(self) -> tuple[int, ...]:
        """The id of the iterator program, once loaded."""
        it = self._iterator
        return () if it is None else (it.prog_id,)

    def forget(self) -> None:
        """Drop the kept attachments: the next read decodes every record anew."""
        with self._lock:
            self._raw, self._result, self._known = None, {}, {}

    def close(self) -> None:
        with self._lock:
            if self._iterator is not None:
                self._iterator.close()
                self._iterator = None
