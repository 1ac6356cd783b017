"""otel_bpf: the cost of every eBPF program on the host, as OpenTelemetry metrics."""

from __future__ import annotations

__version__ = "0.1.0"

from otel_bpf.kernel.programs import read_programs as read_programs
from otel_bpf.otel.options import MetricsOptions as MetricsOptions
from otel_bpf.otel.plugin import BpfMetricsPlugin as BpfMetricsPlugin
