"""From snapshots to metric points: pure, no SDK and no kernel.

:class:`SeriesTable` is fed every snapshot in order and yields, for the newest one, a
:class:`Frame`: for each metric name the ``(value, attributes)`` points to observe.  With the
``by_name_type`` attribute set it keeps counters monotonic across program unloads: when a
program of an aggregate series goes away, its last totals move into the series' offset, and
the series itself lives on for ``grace_passes`` passes after its last program so a quick reload
continues it.  Memory is bounded by the programs loaded now plus the series in grace.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from otel_bpf.figures import same_program
from otel_bpf.kernel.prog_types import can_count_recursion_misses
from otel_bpf.otel import names
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.records import Attachment, ProgramRecord
from otel_bpf.snapshot import ProgramSample, Snapshot

Attributes = Mapping[str, str | int]
Point = tuple[float, Attributes]


@dataclass(frozen=True, slots=True)
class Frame:
    """The points of every metric for one snapshot (``seq``)."""

    seq: int
    points: Mapping[str, tuple[Point, ...]]

    def get(self, metric: str) -> tuple[Point, ...]:
        """The points of ``metric`` (empty when it has none)."""
        return self.points.get(metric, ())


EMPTY_FRAME = Frame(seq=0, points={})


def exports_misses(program: ProgramRecord) -> bool:
    """Whether ``program`` has a ``bpf.program.recursion.misses`` series: the kernel reports
    the counter (5.12+) and can increment it for the program's type."""
    return program.recursion_misses is not None and can_count_recursion_misses(program.type)


def program_attributes(program: ProgramRecord, options: MetricsOptions) -> dict[str, str | int]:
    """The attributes of ``program``'s series under ``options``."""
    attrs: dict[str, str | int] = {}
    if options.attributes == "per_program":
        attrs[names.PROGRAM_ID] = program.id
    attrs[names.PROGRAM_NAME] = program.name
    attrs[names.PROGRAM_TYPE] = program.type
    if options.include_tag:
        attrs[names.PROGRAM_TAG] = program.tag
    return attrs


def attachment_attributes(base: Attributes, attachment: Attachment) -> dict[str, str | int]:
    """The attributes of the ``bpf.program.attachment`` point of ``attachment``: the
    program's (``base``), the attach point's, and the semantic conventions' interface,
    container and pod where the attach point names them.

    Optional attributes are left out rather than set empty: an empty value would be a series
    of its own that no query for a real name or id matches.  The texts come from the kernel
    and the file system (interface and cgroup names): they are exported as they are, only
    made valid UTF-8 (an OTLP encoder refuses the lone surrogates a path decoded with
    ``surrogateescape`` can hold), as the owner series' process names are.
    """
    attrs = dict(base)
    attrs[names.ATTACH_KIND] = attachment.kind
    if attachment.attach_type is not None:
        attrs[names.ATTACH_TYPE] = attachment.attach_type
    if attachment.kind == "socket" and attachment.pid is not None:
        # One series per process, not per socket: a filtered listener passes its filter to
        # every connection it accepts, and a series per connection would come and go with
        # each of them.  The sockets of one process fold into one point (deduplicated).
        attrs[names.ATTACH_TARGET] = f"pid {attachment.pid}"
        attrs[names.PROCESS_PID] = attachment.pid
    else:
        attrs[names.ATTACH_TARGET] = _utf8(attachment.target)
    attrs[names.ATTACH_VIA] = attachment.via
    if attachment.ifname is not None:
        attrs[names.NETWORK_INTERFACE_NAME] = _utf8(attachment.ifname)
    if attachment.container_id is not None:
        attrs[names.CONTAINER_ID] = attachment.container_id
    if attachment.pod_uid is not None:
        attrs[names.K8S_POD_UID] = attachment.pod_uid
    return attrs


def _utf8(text: str) -> str:
    """``text`` as valid UTF-8: the bytes ``surrogateescape`` smuggled in are decoded the way
    process names are (U+FFFD for what is not UTF-8), any other lone surrogate is U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = bytearray()
        for c in text:
            code = ord(c)
            if 0xDC80 <= code <= 0xDCFF:
                raw.append(code - 0xDC00)
            elif 0xD800 <= code <= 0xDFFF:
                raw += "\ufffd".encode()
            else:
                raw += c.encode()
        return raw.decode("utf-8", "replace")
    return text


_SeriesKey = tuple[tuple[str, str | int], ...]


CpuTotals = tuple[int, int, int, int]
"""``(cpu, run_time_ns, run_cnt, recursion_misses)``, the order of ``CpuCounters``."""


@dataclass(slots=True)
class _Totals:
    load_time: float = 0.0
    run_time_ns: int = 0
    run_cnt: int = 0
    recursion_misses: int = 0
    per_cpu: dict[int, tuple[int, int, int]] | None = None
    """cpu -> (run_time_ns, run_cnt, recursion_misses), with per-CPU counters."""

    def add(self, other: _Totals) -> None:
        self.run_time_ns += other.run_time_ns
        self.run_cnt += other.run_cnt
        self.recursion_misses += other.recursion_misses
        if other.per_cpu:
            # A new dict of new tuples: an offset never shares state with a live reading.
            mine = dict(self.per_cpu or {})
            for cpu, (t, n, m) in other.per_cpu.items():
                had = mine.get(cpu, (0, 0, 0))
                mine[cpu] = (had[0] + t, had[1] + n, had[2] + m)
            self.per_cpu = mine


def _totals(p: ProgramRecord, per_cpu: bool) -> _Totals:
    cpus = None
    if per_cpu and p.per_cpu is not None:
        cpus = {c.cpu: (c.run_time_ns, c.run_cnt, c.recursion_misses) for c in p.per_cpu}
    return _Totals(p.load_time, p.run_time_ns, p.run_cnt, p.recursion_misses or 0, cpus)


@dataclass(slots=True)
class _Aggregate:
    attributes: dict[str, str | int]
    offset: _Totals = field(default_factory=_Totals)
    live: dict[int, _Totals] = field(default_factory=dict)
    """Last totals of each loaded program of the series, by program id."""
    idle_passes: int = 0
    has_misses: bool = False


class SeriesTable:
    """Turns the stream of snapshots into frames of points (see the module docstring)."""

    def __init__(self, options: MetricsOptions) -> None:
        self.options = options
        self._seq = 0
        self._latest: Snapshot | None = None
        self._aggregates: dict[_SeriesKey, _Aggregate] = {}
        self._frame = EMPTY_FRAME
        self._types_seen: set[str] = set()

    @property
    def seq(self) -> int:
        """The ``seq`` of the last snapshot fed (0 before any)."""
        return self._seq

    @property
    def series_in_memory(self) -> int:
        """Aggregate series held (``by_name_type``): live ones plus those in grace."""
        return len(self._aggregates)

    def reset(self) -> None:
        """Forget everything (the snapshot stream restarted)."""
        self._seq = 0
        self._latest = None
        self._aggregates.clear()
        self._frame = EMPTY_FRAME

    def feed(self, snapshot: Snapshot) -> None:
        """Account for ``snapshot``; snapshots must come in ``seq`` order (gaps are fine)."""
        if snapshot.seq <= self._seq:
            if snapshot.seq == self._seq:
                return
            self.reset()
        if self.options.attributes == "by_name_type":
            self._feed_aggregates(snapshot)
        # Fed on every pass: only programs of a type not seen yet go through the filters.
        unseen = {s.program.type for s in snapshot.programs} - self._types_seen
        if unseen:
            self._types_seen.update(
                s.program.type
                for s in snapshot.programs
                if s.program.type in unseen and self.options.matches(s.program)
            )
        self._seq = snapshot.seq
        self._latest = snapshot
        self._frame = EMPTY_FRAME

    def feed_all(self, snapshots: tuple[Snapshot, ...] | list[Snapshot]) -> None:
        """Feed the snapshots newer than the last one fed (oldest first)."""
        if snapshots and snapshots[-1].seq < self._seq:
            self.reset()
        for s in snapshots:
            if s.seq > self._seq:
                self.feed(s)

    def _feed_aggregates(self, snapshot: Snapshot) -> None:
        opts = self.options
        seen: dict[_SeriesKey, dict[int, _Totals]] = {}
        for sample in snapshot.programs:
            p = sample.program
            if not opts.matches(p):
                continue
            attrs = program_attributes(p, opts)
            key = tuple(attrs.items())
            agg = self._aggregates.get(key)
            if agg is None:
                agg = self._aggregates[key] = _Aggregate(attributes=attrs)
            if exports_misses(p):
                agg.has_misses = True
            seen.setdefault(key, {})[p.id] = _totals(p, opts.per_cpu)
        for key in list(self._aggregates):
            agg = self._aggregates[key]
            now = seen.get(key, {})
            for prog_id, last in agg.live.items():
                current = now.get(prog_id)
                if current is None or not same_program(last, current):
                    # Unloaded (or its id now names another program): keep what it counted.
                    agg.offset.add(last)
            agg.live = now
            if now:
                agg.idle_passes = 0
            else:
                agg.idle_passes += 1
                if agg.idle_passes > opts.grace_passes:
                    del self._aggregates[key]

    def frame(self) -> Frame:
        """The points for the newest snapshot fed (cached until the next feed)."""
        if self._frame.seq != self._seq or self._latest is None:
            self._frame = self._build() if self._latest is not None else EMPTY_FRAME
        return self._frame

    # -- building ----------------------------------------------------------------------

    def _build(self) -> Frame:
        snap = self._latest
        assert snap is not None
        opts = self.options
        points: dict[str, list[Point]] = {m.name: [] for m in names.ALL}
        selected = [s for s in snap.programs if opts.matches(s.program)]

        # A type whose last program unloaded reports 0 rather than vanishing, so a backend
        # does not keep showing its last count; the kernel has a few dozen types at most.
        by_type: dict[str, int] = dict.fromkeys(self._types_seen, 0)
        for s in selected:
            by_type[s.program.type] = by_type.get(s.program.type, 0) + 1
        points[names.PROGRAM_COUNT.name] = [
            (n, {names.PROGRAM_TYPE: t}) for t, n in sorted(by_type.items())
        ]
        points[names.STATS_ENABLED.name] = [(1 if snap.stats.enabled else 0, {})]

        if opts.attributes == "per_program":
            self._per_program(selected, points)
        else:
            self._by_name_type(selected, points)

        if opts.owner_series:
            for s in selected:
                base = program_attributes(s.program, opts)
                for owner in s.program.owners or ():
                    attrs = dict(base)
                    attrs[names.PROCESS_PID] = owner.pid
                    attrs[names.PROCESS_EXECUTABLE_NAME] = owner.executable or owner.comm
                    # Only when the cgroup names them: an empty value would be a series of
                    # its own that no query for a real id matches.
                    if owner.workload.container_id is not None:
                        attrs[names.CONTAINER_ID] = owner.workload.container_id
                    if owner.workload.pod_uid is not None:
                        attrs[names.K8S_POD_UID] = owner.workload.pod_uid
                    points[names.PROGRAM_OWNER.name].append((1, attrs))
            points[names.PROGRAM_OWNER.name] = _dedupe(points[names.PROGRAM_OWNER.name])
        if opts.attachment_series:
            attached = points[names.PROGRAM_ATTACHMENT.name]
            for s in selected:
                base = program_attributes(s.program, opts)
                for attachment in s.program.attachments or ():
                    attached.append((1, attachment_attributes(base, attachment)))
            points[names.PROGRAM_ATTACHMENT.name] = _dedupe(attached)
        if opts.map_memory:
            seen_maps: set[int] = set()
            for s in selected:
                for m in s.program.maps or ():
                    if m.id in seen_maps or m.memlock_bytes is None:
                        continue
                    seen_maps.add(m.id)
                    points[names.MAP_MEMORY_USAGE.name].append(
                        (
                            m.memlock_bytes,
                            {names.MAP_ID: m.id, names.MAP_NAME: m.name, names.MAP_TYPE: m.type},
                        )
                    )
        return Frame(seq=snap.seq, points={k: tuple(v) for k, v in points.items() if v})

    def _per_program(self, selected: list[ProgramSample], points: dict[str, list[Point]]) -> None:
        opts = self.options
        for s in selected:
            p = s.program
            attrs = program_attributes(p, opts)
            points[names.RUN_TIME.name].append((p.run_time_ns / 1e9, attrs))
            points[names.RUNS.name].append((p.run_cnt, attrs))
            if p.recursion_misses is not None and exports_misses(p):
                points[names.RECURSION_MISSES.name].append((p.recursion_misses, attrs))
            if opts.per_cpu and p.per_cpu is not None:
                _per_cpu_points(attrs, p.per_cpu, exports_misses(p), points)
            if opts.derived_gauges:
                if s.period_avg_runtime_ns is not None:
                    avg = s.period_avg_runtime_ns / 1e9
                    points[names.RUN_TIME_AVERAGE.name].append((avg, attrs))
                if s.events_per_sec is not None:
                    points[names.RUN_RATE.name].append((s.events_per_sec, attrs))
                if s.cpu_utilization is not None:
                    points[names.CPU_UTILIZATION.name].append((s.cpu_utilization, attrs))
            if opts.memory and p.memlock_bytes is not None:
                points[names.MEMORY_USAGE.name].append((p.memlock_bytes, attrs))
            if opts.code_size:
                points[names.CODE_SIZE.name].append((_code_size(p), attrs))
            if opts.verifier_instructions and p.verified_insns is not None:
                points[names.VERIFIER_INSTRUCTIONS.name].append((p.verified_insns, attrs))

    def _by_name_type(self, selected: list[ProgramSample], points: dict[str, list[Point]]) -> None:
        opts = self.options
        groups: dict[_SeriesKey, list[ProgramSample]] = {}
        for s in selected:
            key = tuple(program_attributes(s.program, opts).items())
            groups.setdefault(key, []).append(s)
        for key, agg in self._aggregates.items():
            total = _Totals()
            total.add(agg.offset)
            for t in agg.live.values():
                total.add(t)
            attrs = agg.attributes
            points[names.RUN_TIME.name].append((total.run_time_ns / 1e9, attrs))
            points[names.RUNS.name].append((total.run_cnt, attrs))
            if agg.has_misses:
                points[names.RECURSION_MISSES.name].append((total.recursion_misses, attrs))
            if opts.per_cpu and total.per_cpu:
                cpus = ((cpu, *v) for cpu, v in sorted(total.per_cpu.items()))
                _per_cpu_points(attrs, cpus, agg.has_misses, points)
            members = groups.get(key, [])
            if not members:
                continue
            if opts.derived_gauges:
                _aggregate_gauges(members, attrs, points)
            if opts.memory:
                mems = [s.program.memlock_bytes for s in members if s.program.memlock_bytes]
                if mems:
                    points[names.MEMORY_USAGE.name].append((sum(mems), attrs))
            if opts.code_size:
                points[names.CODE_SIZE.name].append(
                    (sum(_code_size(s.program) for s in members), attrs)
                )
            if opts.verifier_instructions:
                insns = [s.program.verified_insns for s in members]
                known = [n for n in insns if n is not None]
                if known:
                    points[names.VERIFIER_INSTRUCTIONS.name].append((max(known), attrs))


def _per_cpu_points(
    attrs: Attributes,
    cpus: Iterable[CpuTotals],
    misses: bool,
    points: dict[str, list[Point]],
) -> None:
    """One point per CPU of each per-CPU counter: the series' attributes plus
    ``cpu.logical_number`` (one attribute dict per CPU, shared by the instruments)."""
    run_time = points[names.CPU_RUN_TIME.name]
    runs = points[names.CPU_RUNS.name]
    missed = points[names.CPU_RECURSION_MISSES.name]
    for cpu, run_time_ns, run_cnt, recursion_misses in cpus:
        cpu_attrs = dict(attrs)
        cpu_attrs[names.CPU_LOGICAL_NUMBER] = cpu
        run_time.append((run_time_ns / 1e9, cpu_attrs))
        runs.append((run_cnt, cpu_attrs))
        if misses:
            missed.append((recursion_misses, cpu_attrs))


def _aggregate_gauges(
    members: list[ProgramSample], attrs: Attributes, points: dict[str, list[Point]]
) -> None:
    """The period figures of one aggregate series: rates and utilisation add up, the mean
    run time is weighted by each program's runs."""
    rated = [
        s for s in members if s.period_avg_runtime_ns is not None and s.events_per_sec is not None
    ]
    eps = sum(s.events_per_sec or 0.0 for s in rated)
    if rated and eps > 0:
        avg = sum((s.period_avg_runtime_ns or 0.0) * (s.events_per_sec or 0.0) for s in rated)
        points[names.RUN_TIME_AVERAGE.name].append((avg / eps / 1e9, attrs))
    rates = [s.events_per_sec for s in members if s.events_per_sec is not None]
    if rates:
        points[names.RUN_RATE.name].append((sum(rates), attrs))
    utils = [s.cpu_utilization for s in members if s.cpu_utilization is not None]
    if utils:
        points[names.CPU_UTILIZATION.name].append((sum(utils), attrs))


def _code_size(p: ProgramRecord) -> int:
    return p.jited_size or p.xlated_size


def _dedupe(points: list[Point]) -> list[Point]:
    """One point per attribute set (the SDK would sum duplicates of a counter)."""
    out: dict[tuple[tuple[str, str | int], ...], Point] = {}
    for value, attrs in points:
        out.setdefault(tuple(attrs.items()), (value, attrs))
    return list(out.values())
