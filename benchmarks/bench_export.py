"""CPU of one metrics export at N programs, split into what the OpenTelemetry SDK costs by
itself and what ``bpftop-otel`` adds (run as root).

    python benchmarks/bench_export.py [--programs 1000] [--exports 20]

Three measurements, thread CPU per export (medians of ``--exports``):

* **SDK floor, collect**: an SDK ``MeterProvider`` whose observable instruments return
  pre-built observations with the same attributes and the same number of points as ours
  (no kernel, no code of this project): ``reader.collect()``.
* **SDK floor, encode**: the OTLP exporter's own protobuf encoding of that collection
  (``encode_metrics(...).SerializeToString()``).
* **bpftop-otel export**: the exporter the CLI builds (OTLP gRPC, or HTTP with ``--protocol
  http/protobuf``) sending to a local ``rotel`` collector, fed by the real sampler reading
  ``--programs`` loaded socket filters (half of them run between exports):
  ``provider.force_flush()`` (collection, our callbacks, encoding and the send).

Divide by the export interval for the share of one core: at 10 s, 100 ms per export is 1 %.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from _bench import Rotel, load_average, loaded_filters, machine, test_run
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from otel_bpf.cli.args import parse_args
from otel_bpf.cli.config import resolve
from otel_bpf.cli.exporters import build_telemetry
from otel_bpf.cli.logs import ExportLogGate
from otel_bpf.kernel.open_source import open_source
from otel_bpf.kernel.stats import stats_enabled
from otel_bpf.otel import names
from otel_bpf.otel.instruments import create_instruments
from otel_bpf.sampler import Sampler


def thread_cpu_ms(fn: Callable[[], object], runs: int, between: Callable[[], object]) -> float:
    """Median thread CPU milliseconds of ``fn()`` over ``runs`` runs after one warm-up."""
    between()
    fn()
    times = []
    for _ in range(runs):
        between()
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return statistics.median(times) * 1e3


def sdk_floor(points_per_metric: dict[str, int], runs: int) -> tuple[float, float]:
    """(collect ms, encode ms) of the bare SDK for the same metrics and point counts."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader], exemplar_filter=AlwaysOffExemplarFilter(), shutdown_on_exit=False
    )
    meter = provider.get_meter("floor")
    kinds = {m.name: m.kind for m in names.ALL}
    for metric, count in points_per_metric.items():
        observations = [
            Observation(
                float(i),
                {
                    names.PROGRAM_ID: i,
                    names.PROGRAM_NAME: "bench_filter",
                    names.PROGRAM_TYPE: "socket_filter",
                },
            )
            for i in range(count)
        ]

        def callback(_options: CallbackOptions, obs: list[Observation] = observations) -> list:
            return obs

        create = {
            "counter": meter.create_observable_counter,
            "updowncounter": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }[kinds[metric]]
        create(metric, callbacks=[callback])
    collected: list[object] = []
    collect_ms = thread_cpu_ms(lambda: collected.append(reader.get_metrics_data()), runs, list)
    data = collected[-1]
    encode_ms = thread_cpu_ms(lambda: encode_metrics(data).SerializeToString(), runs, list)
    provider.shutdown()
    return collect_ms, encode_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--programs", type=int, default=1000)
    parser.add_argument("--exports", type=int, default=20)
    parser.add_argument("--protocol", default="grpc", choices=["grpc", "http/protobuf"])
    args = parser.parse_args()

    print(f"one export: {machine()}; {load_average()}")
    with loaded_filters(args.programs) as fds, Rotel() as rotel, stats_enabled():
        endpoint = rotel.url if args.protocol == "grpc" else rotel.http_url
        config = resolve(
            parse_args(
                ["--endpoint", endpoint, "--protocol", args.protocol, "--export-interval", "3600"]
            )
        )
        source = open_source("auto")
        telemetry = build_telemetry(config, ExportLogGate(), sampling_path=source.path)
        assert telemetry.provider is not None
        sampler = Sampler(interval=1, history=4, source=source)
        instruments = create_instruments(telemetry.provider, lambda: sampler.history)

        def next_pass() -> None:
            for fd in fds[: len(fds) // 2]:
                test_run(fd)
            sampler.sample_once()

        ours = thread_cpu_ms(telemetry.provider.force_flush, args.exports, next_pass)
        frame = instruments.frame()
        counts = {metric: len(points) for metric, points in frame.points.items()}
        total = sum(counts.values())
        telemetry.shutdown(5)
    collect_ms, encode_ms = sdk_floor(counts, args.exports)

    print(
        f"{total} points ({len(sampler.latest.programs) if sampler.latest else 0} programs "
        f"on the host, sampling path {source.path}), OTLP {args.protocol}"
    )
    print(f"{'':>28} | {'ms per export':>13} | {'us per point':>12} | {'% of a core at 10 s':>19}")
    for label, ms in (
        ("SDK floor: collect", collect_ms),
        ("SDK floor: OTLP encode", encode_ms),
        ("SDK floor: both", collect_ms + encode_ms),
        ("bpftop-otel export", ours),
    ):
        print(f"{label:>28} | {ms:>13.1f} | {ms / total * 1e3:>12.1f} | {ms / 100:>19.2f}")


if __name__ == "__main__":
    main()
