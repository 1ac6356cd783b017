"""The iterator path's self-check against the syscall path, before it is trusted.

The iterator program depends on kernel-internal layouts (offsets from BTF, the PERCPU_ARRAY
value layout), so before it is trusted its records are compared with the syscall path's.
Counters move while we read, so the check reads syscall -> iterator -> syscall and compares
counters only for programs whose two syscall readings are equal (counters only grow, so an
iterator reading taken in between must be equal too).  Ids, types and names are compared
for every program present in both syscall readings.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Mapping
from dataclasses import replace

from otel_bpf.kernel._uapi import BPF_OBJ_NAME_LEN
from otel_bpf.kernel.errors import BpfError, BpfUnsupportedError
from otel_bpf.kernel.iterator.progs import PROGRAM_NAME, ProgRecordRaw
from otel_bpf.kernel.iterator.source import IteratorSource
from otel_bpf.kernel.loader import VerifierError
from otel_bpf.kernel.programs import SyscallSource
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.records import ProgramRecord

_log = logging.getLogger("otel_bpf.sampling")

_MAX_REPORTED = 3


class IteratorUnavailableError(BpfUnsupportedError):
    """The iterator path cannot be used here; the message says why."""


def compare(
    before: list[ProgramRecord],
    iterated: list[ProgRecordRaw],
    merged: list[ProgramRecord],
    after: list[ProgramRecord],
    *,
    ignore: frozenset[int] = frozenset(),
) -> list[str]:
    """Differences between the iterator's view and two syscall readings around it."""
    first = {r.id: r for r in before}
    second = {r.id: r for r in after}
    raw = {r.id: r for r in iterated}
    full = {r.id: r for r in merged}
    problems: list[str] = []
    for prog_id in sorted(first.keys() & second.keys() - ignore):
        a, b = first[prog_id], second[prog_id]
        r, m = raw.get(prog_id), full.get(prog_id)
        if r is None or m is None:
            problems.append(f"program {prog_id} ({a.name}) missing from the iterator's records")
            continue
        if r.type_id != a.type_id or m.type != a.type:
            problems.append(f"program {prog_id}: type {r.type_id} != {a.type_id}")
        # The syscall path shows the BTF full name when the kernel's is cut at 15 chars.
        if r.name != a.name and len(r.name) != BPF_OBJ_NAME_LEN - 1:
            problems.append(f"program {prog_id}: name {r.name!r} != {a.name!r}")
        if m.name != a.name:
            problems.append(f"program {prog_id}: full name {m.name!r} != {a.name!r}")
        steady = (a.run_cnt, a.run_time_ns, a.recursion_misses) == (
            b.run_cnt,
            b.run_time_ns,
            b.recursion_misses,
        )
        if m.per_cpu is not None:
            sums = (
                sum(c.run_cnt for c in m.per_cpu),
                sum(c.run_time_ns for c in m.per_cpu),
                sum(c.recursion_misses for c in m.per_cpu),
            )
            if sums != (m.run_cnt, m.run_time_ns, m.recursion_misses or 0):
                problems.append(f"program {prog_id}: per-CPU sums {sums} != its totals")
        if steady:
            for what, got, want in (
                ("run_cnt", r.run_cnt, a.run_cnt),
                ("run_time_ns", r.run_time_ns, a.run_time_ns),
                ("recursion_misses", r.recursion_misses, a.recursion_misses),
                ("merged run_cnt", m.run_cnt, a.run_cnt),
                ("merged run_time_ns", m.run_time_ns, a.run_time_ns),
            ):
                if want is not None and got != want:
                    problems.append(f"program {prog_id}: {what} {got} != {want}")
    return problems


def self_check(source: IteratorSource, *, attempts: int = 2) -> list[str]:
    """Compare ``source`` with the syscall path; an empty list means they agree."""
    problems: list[str] = []
    syscall = SyscallSource(SourceOptions(memlock=False))
    checked = replace(source.options, owners=False, maps=False, include_self=True)
    for _ in range(attempts):
        own = source.self_ids
        before = syscall.read().records
        iterated = source.read_raw()
        merged = source.read(checked).records
        after = syscall.read().records
        problems = compare(before, iterated, merged, after, ignore=own)
        # The walk must also see our own program, with its id and name: this holds on an
        # otherwise empty host, where the comparison above has nothing to compare.
        mine = [r for r in iterated if r.id in own]
        if not mine or any(r.name != PROGRAM_NAME for r in mine if r.id == min(own)):
            problems.append(
                f"the iterator does not report its own program {min(own)} as {PROGRAM_NAME!r}"
            )
        if not problems:
            return []
    return problems


def _load_failure(err: OSError) -> str:
    """One line: the verifier's last words for a rejection, else the error's first line."""
    if isinstance(err, VerifierError):
        lines = [line for line in err.log.splitlines() if line.strip()]
        # The log ends with a summary ("processed N insns ..."); the reason precedes it.
        reasons = [
            line for line in lines if not line.startswith(("processed ", "verification time"))
        ]
        if reasons:
            return f"the verifier rejected it: {reasons[-1].strip()}"
    text = str(err)
    return text.splitlines()[0] if text else type(err).__name__


def _describe(problems: list[str]) -> str:
    more = len(problems) - _MAX_REPORTED
    text = "; ".join(problems[:_MAX_REPORTED])
    return f"{text}; and {more} more" if more > 0 else text


def open_iterator_source(
    options: SourceOptions | None = None,
    *,
    layout_overrides: Mapping[str, int] | None = None,
    use_rdonly_cast: bool | None = None,
) -> IteratorSource:
    """Load the iterator path and self-check it; raises :class:`IteratorUnavailableError`.

    :func:`otel_bpf.kernel.source.open_source` is the way in for consumers."""
    try:
        source = IteratorSource(
            options,
            layout_overrides=layout_overrides,
            use_rdonly_cast=use_rdonly_cast,
        )
    except (BpfError, OSError) as err:
        raise IteratorUnavailableError(
            err.errno or errno.EINVAL, f"iter/bpf_prog could not be loaded: {_load_failure(err)}"
        ) from err
    try:
        problems = self_check(source)
    except (BpfError, OSError) as err:
        source.close()
        raise IteratorUnavailableError(
            err.errno or errno.EINVAL, f"iter/bpf_prog self-check failed: {err}"
        ) from err
    if problems:
        source.close()
        raise IteratorUnavailableError(
            errno.EINVAL,
            f"iter/bpf_prog disagrees with the syscall path: {_describe(problems)}",
        )
    return source
