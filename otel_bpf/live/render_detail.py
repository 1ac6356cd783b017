"""The detail view of one program: its facts, its per-CPU split (with per-CPU counters) and
three charts over the history window."""

from __future__ import annotations

from otel_bpf.live.attached import detail_lines
from otel_bpf.live.charts import chart
from otel_bpf.live.context import RenderContext, wrap_items
from otel_bpf.live.format import fmt_age, fmt_bytes, fmt_int, fmt_time
from otel_bpf.live.history import ChartHistory
from otel_bpf.live.render_cpus import cpu_section
from otel_bpf.live.render_table import footer_lines
from otel_bpf.live.sanitize import fit, sanitize
from otel_bpf.live.state import ViewState, display_name
from otel_bpf.live.terminal import Line, Style
from otel_bpf.records import ProgramRecord
from otel_bpf.snapshot import ProgramSample

CHARTS: tuple[tuple[str, str, str], ...] = (
    ("Avg runtime (ns)", "period_avg_runtime_ns", "ns"),
    ("Events/s", "events_per_sec", "rate"),
    ("CPU % (of one core)", "cpu_percent", "percent"),
)
"""Title, ProgramSample attribute and value kind of each chart."""

MAX_MAP_LINES = 4

MIN_ATTACH_LINES = 3
"""Lines the Attached section always gets: its title, one attachment and ``+N more``."""


def cpu_lines_allowed(room: int, cpus: int) -> int:
    """Lines for the per-CPU split out of the ``room`` left under the facts: one per CPU
    plus the title when that is at most half the room, else half the room (the CPUs are
    then grouped); the charts get the rest."""
    return min(cpus + 1, max(room // 2, 0))


def last_seen(history: ChartHistory, prog_id: int) -> tuple[ProgramSample, float] | None:
    """The newest sample of ``prog_id`` in the window, with the wall-clock time of its pass."""
    return history.last_seen(prog_id)


def series(history: ChartHistory, prog_id: int, attribute: str) -> list[float | None]:
    """One figure of ``prog_id`` across the window (None where it was unknown or absent)."""
    return history.series(prog_id, attribute)


def window_text(history: ChartHistory) -> str:
    """What the charts span: ``Charts: last 45 samples (44s), newest on the right``."""
    if not len(history):
        return "Charts: no samples yet"
    return f"Charts: last {len(history)} samples ({fmt_age(history.span)}), newest on the right"


def attach_lines_allowed(room: int) -> int:
    """Lines for the Attached section beyond the :data:`MIN_ATTACH_LINES` it always gets:
    half the ``room`` left under the facts, the charts keep the rest."""
    return MIN_ATTACH_LINES + max(room, 0) // 2


def info_lines(
    program: ProgramRecord, now: float, width: int, attach_rows: int = MIN_ATTACH_LINES
) -> list[str]:
    """The facts about a program, as text lines (sanitised); where it is attached in at
    most ``attach_rows`` lines."""
    p = program
    items = [
        [f"ID {p.id}", f"Type {sanitize(p.type)}", f"Name {display_name(p)}"],
        [
            f"Tag {sanitize(p.tag)}",
            f"Loaded at {fmt_time(p.load_time, now)}",
            f"UID {p.uid}",
            f"BTF id {p.btf_id}" if p.btf_id else "no BTF",
        ],
        [
            f"Verified insns {fmt_int(p.verified_insns)}",
            f"Xlated {fmt_bytes(p.xlated_size)}",
            f"JITed {fmt_bytes(p.jited_size)}",
            f"Memlock {fmt_bytes(p.memlock_bytes)}",
        ],
        [
            f"Runs {fmt_int(p.run_cnt)}",
            f"Run time {fmt_int(p.run_time_ns)} ns",
            f"Recursion misses {fmt_int(p.recursion_misses)}",
        ],
    ]
    lines: list[str] = []
    for group in items:
        lines.extend(wrap_items(group, width, sep="   "))
    if p.owners is None:
        lines.append("Owners: not looked up")
    elif not p.owners:
        lines.append("Owners: none (pinned or held by the kernel)")
    else:
        owners = []
        for o in p.owners:  # one per process, with every way it holds the program
            exe = f" [{sanitize(o.executable)}]" if o.executable else ""
            vias = "+".join(sanitize(v) for v in o.via)
            # Ids are hex and UUIDs by construction (otel_bpf.workload): nothing to escape.
            # A container as Docker shows it, by its first 12 digits.
            where = ""
            if o.workload.container_id is not None:
                where += f" container {o.workload.container_id[:12]}"
            if o.workload.pod_uid is not None:
                where += f" pod {o.workload.pod_uid}"
            owners.append(f"{sanitize(o.comm)}({o.pid}){exe} via {vias}{where}")
        owners = [o + "," for o in owners[:-1]] + owners[-1:]
        lines.extend(wrap_items(["Owners:", *owners], width, sep=" "))
    lines.extend(detail_lines(p.attachments, attach_rows, width))
    if p.maps is None:
        lines.append(f"Maps: {len(p.map_ids)} (ids {', '.join(map(str, p.map_ids)) or '-'})")
    elif not p.maps:
        lines.append("Maps: none")
    else:
        total = sum(m.memlock_bytes or 0 for m in p.maps)
        lines.append(f"Maps: {len(p.maps)}, memlock {fmt_bytes(total)} in all")
        lines.extend(
            f"  #{m.id} {sanitize(m.name) or '-'} {sanitize(m.type)}"
            f" key {m.key_size} value {m.value_size} max {m.max_entries}"
            f" memlock {fmt_bytes(m.memlock_bytes)}"
            for m in p.maps[:MAX_MAP_LINES]
        )
        if len(p.maps) > MAX_MAP_LINES:
            lines.append(f"  ... and {len(p.maps) - MAX_MAP_LINES} more")
    return lines


def render_detail(ctx: RenderContext, state: ViewState) -> list[Line]:
    """The detail screen for ``state.detail_id`` (shown as gone once it is unloaded)."""
    width, height = ctx.width, ctx.height
    prog_id = state.detail_id
    foot = footer_lines(state.mode, width)
    lines: list[Line] = []
    history = ctx.charts
    found = None if prog_id is None else last_seen(history, prog_id)
    current = ctx.snapshot.get(prog_id) if ctx.snapshot and prog_id is not None else None
    if current is not None and ctx.snapshot is not None:
        found = (current, ctx.snapshot.wall_time)
    if prog_id is None or found is None:
        lines.append(Line(fit(f"Program {prog_id}: gone (not in the history window)", width)))
    else:
        sample, seen_at = found
        name = display_name(sample.program)
        if current is None:
            gone = f"GONE: program {prog_id} ({name}) is no longer loaded; last seen at "
            gone += fmt_time(seen_at)
            lines.append(Line(fit(gone, width), Style.WARN))
        else:
            lines.append(Line(fit(f"Program {prog_id} ({name})", width), Style.TITLE))
        fixed = info_lines(sample.program, ctx.now, width)
        room = height - len(foot) - len(lines) - len(fixed) - len(CHARTS)
        info = info_lines(sample.program, ctx.now, width, attach_lines_allowed(room))
        lines.extend(Line(fit(t, width)) for t in info)
        if ctx.per_cpu:
            allowed = cpu_lines_allowed(
                height - len(lines) - len(foot), len(sample.program.per_cpu or ())
            )
            lines.extend(cpu_section(sample, width, allowed))
    room = height - len(lines) - len(foot)
    chart_height = room // len(CHARTS)
    if prog_id is not None and chart_height >= 2:
        if room - chart_height * len(CHARTS) > 0:
            lines.append(Line(fit(window_text(history), width), Style.DIM))
        for title, attribute, kind in CHARTS:
            values = series(history, prog_id, attribute)
            drawn = chart(title, values, kind, width, chart_height, ctx.glyphs)
            lines.append(Line(fit(drawn[0], width), Style.TITLE))
            lines.extend(Line(fit(t, width)) for t in drawn[1:])
    elif prog_id is not None:
        for title, attribute, kind in CHARTS:
            values = series(history, prog_id, attribute)
            head = chart(title, values, kind, width, 1, ctx.glyphs)[0]
            lines.append(Line(fit(head, width)))
    body = height - len(foot)
    lines = lines[:body]
    while len(lines) < body:
        lines.append(Line(" " * width))
    return lines + foot
