"""``python -m otel_bpf.demo``: run the demo workload until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from types import FrameType

from otel_bpf.demo.programs import DEFAULT_RATES, PROGRAM_NAMES, canonical_name
from otel_bpf.demo.workload import DemoWorkload, DemoWorkloadError
from otel_bpf.kernel.errors import BpfError


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def parse_rate(text: str) -> tuple[str, float]:
    """``NAME=RUNS_PER_SEC`` -> (full program name, rate)."""
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=RUNS_PER_SEC, got {text!r}")
    try:
        return canonical_name(name.strip()), float(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    """Start the workload, print its program ids, wait for a signal, clean up."""
    short = ", ".join(f"{n.removeprefix('otel_demo_')}={DEFAULT_RATES[n]:g}" for n in PROGRAM_NAMES)
    parser = argparse.ArgumentParser(
        prog="python -m otel_bpf.demo",
        description="Load the otel_demo_* BPF programs and make each run at a steady rate "
        "until interrupted; nothing stays loaded afterwards.",
    )
    parser.add_argument(
        "--rate",
        action="append",
        type=parse_rate,
        default=[],
        metavar="NAME=RUNS_PER_SEC",
        help=f"runs per second of one program (defaults: {short})",
    )
    args = parser.parse_args(argv)
    # SIGINT too: a shell starts background jobs with SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler, so `kill -INT` would be lost.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    try:
        with DemoWorkload(dict(args.rate)) as workload:
            print(f"demo workload running (worker pid {workload.pid}); Ctrl-C to stop")
            for name, prog_id in workload.program_ids.items():
                print(f"  {prog_id:>6}  {name:<16} {workload.rates[name]:g} runs/s", flush=True)
            while workload.alive():
                time.sleep(0.5)
            print("demo workload: the worker exited", file=sys.stderr)
            return 1
    except (KeyboardInterrupt, _Stop):
        return 0
    except (DemoWorkloadError, BpfError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
