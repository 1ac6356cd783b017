"""OpenTelemetry export of BPF program metrics.

- :class:`BpfMetricsPlugin` (``otel_bpf.otel.plugin``): for an application with a
  MeterProvider and an event loop (asyncio or trio).
- :class:`BpfProgramsInstrumentor` (``otel_bpf.otel.instrumentor``): for
  ``opentelemetry-instrument``; samples on demand at collection time.
- :class:`BpfInstruments` (``otel_bpf.otel.instruments``): the instruments alone, fed from
  any source of snapshots.
- :mod:`otel_bpf.otel.names`: every metric name, unit and attribute key.
"""

from __future__ import annotations

from otel_bpf.otel.instruments import BpfInstruments
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.otel.plugin import BpfMetricsPlugin

__all__ = ["BpfInstruments", "BpfMetricsPlugin", "MetricsOptions"]
