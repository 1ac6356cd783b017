"""Data points per export at N programs, by metric, through a real SDK InMemoryMetricReader.

    python benchmarks/bench_points.py [--programs 1000] [--type socket_filter] [--derived-gauges]

Synthetic programs (no kernel, no root): two snapshots one second apart in which every
program ran, so the period figures have a value, then one collection. Prints the points of
each metric and their total: what each export carries to the backend.
"""

from __future__ import annotations

import argparse
from collections import Counter

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_bpf.otel.instruments import create_instruments
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.records import ProgramRecord, StatsState
from otel_bpf.snapshot import Snapshot, build_snapshot


def record(pid: int, prog_type: str, runs: int) -> ProgramRecord:
    return ProgramRecord(
        id=pid,
        type=prog_type,
        type_id=1,
        name=f"p{pid}",
        tag="00" * 8,
        run_time_ns=100 * runs,
        run_cnt=runs,
        recursion_misses=0,
        load_time=1000.0 + pid,
        uid=0,
        verified_insns=2,
        xlated_size=16,
        jited_size=40,
        map_ids=(),
        btf_id=0,
        memlock_bytes=4096,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=1000)
    parser.add_argument("--type", default="socket_filter", dest="prog_type")
    parser.add_argument("--derived-gauges", action="store_true")
    parser.add_argument("--attributes", default="per_program")
    args = parser.parse_args()
    stats = StatsState(ours=True, sysctl=False, others=False)
    snaps: list[Snapshot] = []
    for t, runs in enumerate((10, 20)):
        records = [record(i, args.prog_type, runs) for i in range(1, args.programs + 1)]
        prev = snaps[-1] if snaps else None
        snaps.append(
            build_snapshot(
                prev, records, monotonic=float(t), wall_time=1e9 + t, online_cpus=2, stats=stats
            )
        )
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    kwargs = {"derived_gauges": True} if args.derived_gauges else {}
    options = MetricsOptions(attributes=args.attributes, **kwargs)  # type: ignore[arg-type]
    create_instruments(provider, lambda: snaps, options)
    data = reader.get_metrics_data()
    points: Counter[str] = Counter()
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                points[m.name] += len(m.data.data_points)
    provider.shutdown()
    for name, n in sorted(points.items()):
        print(f"{name:40} {n:>7}")
    print(f"{'total':40} {sum(points.values()):>7}")


if __name__ == "__main__":
    main()
