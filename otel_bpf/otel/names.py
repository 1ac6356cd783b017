"""Every metric name, unit, description and attribute key otel_bpf exports, in one place.

Semantic conventions define nothing for BPF, so the names live under ``bpf.`` and follow the
general rules: dotted lowercase, UCUM units (``s``, ``By``, ``1``, curly annotations for
counts), no unit in the name, no ``_total`` suffix (Prometheus exporters add it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

InstrumentKind = Literal["counter", "updowncounter", "gauge"]
"""Observable (asynchronous) instrument kinds."""


@dataclass(frozen=True, slots=True)
class MetricName:
    """A metric's contract: name, instrument kind, unit and description."""

    name: str
    kind: InstrumentKind
    unit: str
    description: str


# -- attribute keys ---------------------------------------------------------------------

PROGRAM_ID = "bpf.program.id"
PROGRAM_NAME = "bpf.program.name"
PROGRAM_TYPE = "bpf.program.type"
PROGRAM_TAG = "bpf.program.tag"
MAP_ID = "bpf.map.id"
MAP_NAME = "bpf.map.name"
MAP_TYPE = "bpf.map.type"
PROCESS_PID = "process.pid"
PROCESS_EXECUTABLE_NAME = "process.executable.name"
CPU_LOGICAL_NUMBER = "cpu.logical_number"
"""The semantic conventions' CPU attribute (int, 0..n-1), on the per-CPU series."""
CONTAINER_ID = "container.id"
K8S_POD_UID = "k8s.pod.uid"
NETWORK_INTERFACE_NAME = "network.interface.name"
"""The semantic conventions' interface attribute, on the attachments to a network device."""
ATTACH_KIND = "bpf.attach.kind"
ATTACH_TYPE = "bpf.attach.type"
ATTACH_TARGET = "bpf.attach.target"
ATTACH_VIA = "bpf.attach.via"

# Resource attribute of a bpftop-otel run: how it reads the programs ("iterator" or
# "syscall"), so a dashboard can tell which path produced the figures.
SAMPLING_PATH = "bpf.sampling.path"

# -- always exported ----------------------------------------------------------------------

RUN_TIME = MetricName(
    "bpf.program.run.time",
    "counter",
    "s",
    "Time the kernel spent running the program since it was loaded (while stats were on).",
)
RUNS = MetricName(
    "bpf.program.runs",
    "counter",
    "{run}",
    "Times the program ran since it was loaded (counted while stats were on).",
)
RECURSION_MISSES = MetricName(
    "bpf.program.recursion.misses",
    "counter",
    "{miss}",
    "Runs the kernel skipped because the program was already running on the CPU.",
)
"""Exported only for the program types whose misses the kernel can count (see
:data:`otel_bpf.kernel.prog_types.RECURSION_CHECKED_TYPES`)."""
PROGRAM_COUNT = MetricName(
    "bpf.program.count",
    "updowncounter",
    "{program}",
    "BPF programs loaded on the host, by program type.",
)
STATS_ENABLED = MetricName(
    "bpf.stats.enabled",
    "gauge",
    "1",
    "1 while the kernel counts BPF run time (BPF_ENABLE_STATS held or the sysctl set), else 0.",
)

# -- opt-in -------------------------------------------------------------------------------

# Figures over a period (``derived_gauges``): a backend derives the same from the counters
# with ``rate()``, so they are off by default.
RUN_TIME_AVERAGE = MetricName(
    "bpf.program.run.time.average",
    "gauge",
    "s",
    "Mean run time per run over the last sampling period.",
)
RUN_RATE = MetricName(
    "bpf.program.run.rate",
    "gauge",
    "{run}/s",
    "Runs per second over the last sampling period.",
)
CPU_UTILIZATION = MetricName(
    "bpf.program.cpu.utilization",
    "gauge",
    "1",
    "Share of all online CPUs spent running the program over the last sampling period (0..1).",
)
MEMORY_USAGE = MetricName(
    "bpf.program.memory.usage",
    "updowncounter",
    "By",
    "Memory charged to the program (memlock from its fdinfo).",
)
CODE_SIZE = MetricName(
    "bpf.program.code.size",
    "updowncounter",
    "By",
    "Size of the program's JIT-compiled code (translated bytecode when not JIT-compiled).",
)
VERIFIER_INSTRUCTIONS = MetricName(
    "bpf.program.verifier.instructions",
    "gauge",
    "{instruction}",
    "Instructions the verifier processed when it loaded the program (kernel 5.16+).",
)
MAP_MEMORY_USAGE = MetricName(
    "bpf.map.memory.usage",
    "updowncounter",
    "By",
    "Memory charged to a map used by an exported program (memlock from its fdinfo).",
)
PROGRAM_OWNER = MetricName(
    "bpf.program.owner",
    "gauge",
    "1",
    "1 for each process that holds the program (its fd or a link to it).",
)
PROGRAM_ATTACHMENT = MetricName(
    "bpf.program.attachment",
    "gauge",
    "1",
    "1 for each place the program is attached to (a device, cgroup, hook, socket, ...).",
)

# Per-CPU counters (``per_cpu``): the totals above split by ``cpu.logical_number``.  Names of
# their own, not the totals with one more attribute: a query that sums a metric over its
# attributes would then count every run twice.
CPU_RUN_TIME = MetricName(
    "bpf.program.cpu.run.time",
    "counter",
    "s",
    "Time the kernel spent running the program on the CPU since it was loaded "
    "(while stats were on).",
)
CPU_RUNS = MetricName(
    "bpf.program.cpu.runs",
    "counter",
    "{run}",
    "Times the program ran on the CPU since it was loaded (counted while stats were on).",
)
CPU_RECURSION_MISSES = MetricName(
    "bpf.program.cpu.recursion.misses",
    "counter",
    "{miss}",
    "Runs the kernel skipped on the CPU because the program was already running there.",
)
"""Like :data:`RECURSION_MISSES`, only for the program types whose misses the kernel can
count."""

ALWAYS: tuple[MetricName, ...] = (
    RUN_TIME,
    RUNS,
    RECURSION_MISSES,
    PROGRAM_COUNT,
    STATS_ENABLED,
)
OPT_IN: tuple[MetricName, ...] = (
    RUN_TIME_AVERAGE,
    RUN_RATE,
    CPU_UTILIZATION,
    MEMORY_USAGE,
    CODE_SIZE,
    VERIFIER_INSTRUCTIONS,
    MAP_MEMORY_USAGE,
    PROGRAM_OWNER,
    PROGRAM_ATTACHMENT,
    CPU_RUN_TIME,
    CPU_RUNS,
    CPU_RECURSION_MISSES,
)
PER_CPU: tuple[MetricName, ...] = (CPU_RUN_TIME, CPU_RUNS, CPU_RECURSION_MISSES)
"""The per-CPU counters (one series per program per possible CPU)."""
ALL: tuple[MetricName, ...] = ALWAYS + OPT_IN

METER_NAME = "otel_bpf"
"""Instrumentation scope name of every instrument."""
