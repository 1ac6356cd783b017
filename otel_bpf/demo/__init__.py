"""A demo workload: real BPF programs named ``otel_demo_*`` run at chosen rates.

Used by ``bpftop-otel --demo``, ``python -m otel_bpf.demo`` and the real-kernel tests.
"""

from __future__ import annotations

from otel_bpf.demo.programs import DEFAULT_RATES, PROGRAM_NAMES
from otel_bpf.demo.workload import DemoWorkload, DemoWorkloadError

__all__ = ["DEFAULT_RATES", "PROGRAM_NAMES", "DemoWorkload", "DemoWorkloadError"]
