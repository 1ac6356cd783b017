"""What the OpenTelemetry instruments export: attribute set, program filters, opt-in metrics.

Patterns (``types``, ``names``, ``owners`` and their ``exclude_`` twins) are shell globs
matched against the whole value (``cilium_*``, ``sched_cls``), or regular expressions when
written with a ``re:`` prefix (``re:^(tc|xdp)_``, searched anywhere in the value).  A program
is exported when it matches at least one include pattern of each non-empty include list and
no exclude pattern.  Owner patterns match a holder's executable name or its ``comm``; they
need owner lookup, which the plugin then switches on in its sampler.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from otel_bpf.kernel.prog_types import PROG_TYPE_NAMES
from otel_bpf.kernel.source import SourceOptions
from otel_bpf.records import ProgramRecord

AttributeSet = Literal["per_program", "by_name_type"]
"""``per_program``: one series per program (id, name, type[, tag]).
``by_name_type``: one series per (name, type[, tag]); programs sharing them are summed."""

ATTRIBUTE_SETS: tuple[AttributeSet, ...] = ("per_program", "by_name_type")


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A glob (whole value) or, with a ``re:`` prefix, a regular expression (searched)."""
    if pattern.startswith("re:"):
        try:
            return re.compile(pattern[3:])
        except re.error as exc:
            raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
    return re.compile(fnmatch.translate(pattern))


def _compile_all(patterns: Iterable[str], what: str) -> tuple[re.Pattern[str], ...]:
    if isinstance(patterns, str):
        raise TypeError(f"{what} must be a sequence of patterns, not a single string")
    return tuple(compile_pattern(p) for p in patterns)


_NEWER_TYPES = tuple(f"type_{n}" for n in range(len(PROG_TYPE_NAMES), len(PROG_TYPE_NAMES) + 64))
"""How types newer than this version's table are named (``type_N``), for checking patterns."""
_KNOWN_TYPES = tuple(t for t in PROG_TYPE_NAMES if t != "unspec")


def _check_type_patterns(
    patterns: tuple[str, ...], compiled: tuple[re.Pattern[str], ...], what: str
) -> None:
    """A type pattern that matches no program type is a typo: it would silently select
    nothing (or exclude nothing), so it is refused with the list of valid names."""
    for pattern, regex in zip(patterns, compiled, strict=True):
        if re.fullmatch(r"type_\d+", pattern):
            continue
        if not any(regex.search(t) for t in _KNOWN_TYPES + _NEWER_TYPES):
            raise ValueError(
                f"{what}: {pattern!r} matches no BPF program type; known types: "
                f"{', '.join(_KNOWN_TYPES)} (types newer than these are named type_N)"
            )


def _any_match(compiled: tuple[re.Pattern[str], ...], values: Iterable[str]) -> bool:
    return any(p.search(v) for p in compiled for v in values)


@dataclass(frozen=True)
class MetricsOptions:
    """Choices for the exported metrics.  All fields have defaults; the object is immutable."""

    attributes: AttributeSet = "per_program"
    """Attribute set of per-program series, see :data:`AttributeSet`."""
    include_tag: bool = False
    """Add ``bpf.program.tag`` to per-program series (and to the ``by_name_type`` key)."""
    types: tuple[str, ...] = ()
    """Only programs whose type (``xdp``, ``sched_cls``, ...) matches one of these."""
    exclude_types: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    """Only programs whose name matches one of these."""
    exclude_names: tuple[str, ...] = ()
    owners: tuple[str, ...] = ()
    """Only programs held by a process whose executable or comm matches one of these."""
    exclude_owners: tuple[str, ...] = ()
    memory: bool = False
    """Export ``bpf.program.memory.usage``."""
    code_size: bool = False
    """Export ``bpf.program.code.size``."""
    verifier_instructions: bool = False
    """Export ``bpf.program.verifier.instructions``."""
    map_memory: bool = False
    """Export ``bpf.map.memory.usage`` for the maps of exported programs (reads maps)."""
    owner_series: bool = False
    """Export ``bpf.program.owner`` (one series per program and holding process)."""
    attachment_series: bool = False
    """Export ``bpf.program.attachment`` (one series per program and place it is attached
    to); the sampler then looks up attach points (``SourceOptions.attachments``)."""
    derived_gauges: bool = False
    """Export ``bpf.program.run.time.average``, ``bpf.program.run.rate`` and
    ``bpf.program.cpu.utilization`` (figures over a period; a backend derives the same from
    the counters with ``rate()``)."""
    per_cpu: bool = False
    """Export ``bpf.program.cpu.run.time``, ``bpf.program.cpu.runs`` and
    ``bpf.program.cpu.recursion.misses``: each program's counters on every possible CPU,
    with ``cpu.logical_number``.  One series per program per CPU per instrument; only the
    iterator sampling path reads them (the syscall path refuses)."""
    grace_passes: int = 3
    """``by_name_type``: sampler passes an aggregate series outlives its last program, so a
    program reloaded within that time continues the same monotonic series."""

    _compiled: dict[str, tuple[re.Pattern[str], ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.attributes not in ATTRIBUTE_SETS:
            raise ValueError(
                f"attributes must be one of {', '.join(ATTRIBUTE_SETS)}, got {self.attributes!r}"
            )
        if self.grace_passes < 0:
            raise ValueError("grace_passes must be >= 0")
        for what in (
            "types",
            "exclude_types",
            "names",
            "exclude_names",
            "owners",
            "exclude_owners",
        ):
            patterns = getattr(self, what)
            compiled = _compile_all(patterns, what)
            if what in ("types", "exclude_types"):
                _check_type_patterns(tuple(patterns), compiled, what)
            object.__setattr__(self, what, tuple(patterns))
            self._compiled[what] = compiled

    @property
    def needs_owners(self) -> bool:
        """The sampler must look up the processes holding each program."""
        return self.owner_series or bool(self.owners or self.exclude_owners)

    @property
    def needs_attachments(self) -> bool:
        """The sampler must look up where each program is attached."""
        return self.attachment_series

    @property
    def needs_maps(self) -> bool:
        """The sampler must read each program's maps."""
        return self.map_memory

    @property
    def source_options(self) -> SourceOptions:
        """What a pass must read for these metrics: owners, maps, attach points and per-CPU
        counters only when needed."""
        return SourceOptions(
            owners=self.needs_owners,
            maps=self.needs_maps,
            attachments=self.needs_attachments,
            per_cpu=self.per_cpu,
        )

    def matches(self, program: ProgramRecord) -> bool:
        """Whether ``program`` passes the type, name and owner filters."""
        c = self._compiled
        if c["types"] and not _any_match(c["types"], (program.type,)):
            return False
        if c["exclude_types"] and _any_match(c["exclude_types"], (program.type,)):
            return False
        if c["names"] and not _any_match(c["names"], (program.name,)):
            return False
        if c["exclude_names"] and _any_match(c["exclude_names"], (program.name,)):
            return False
        if c["owners"] or c["exclude_owners"]:
            holders = [v for o in program.owners or () for v in (o.executable, o.comm) if v]
            if c["owners"] and not _any_match(c["owners"], holders):
                return False
            if c["exclude_owners"] and _any_match(c["exclude_owners"], holders):
                return False
        return True
