"""What ``bpftop-otel`` costs as a sidecar, beside an earlier release, in one run (as root).

    python benchmarks/bench_sidecar.py [--baseline REF|DIR] [--repeats 2] [--seconds 40]
                                       [--settle 15] [--live-settle 125]
                                       [--scenarios export-idle-1000,export-busy-1000,...]

``--baseline`` is the release to compare with: a checkout directory, or a git commit of this
repository (checked out into a temporary worktree for the run; default: 0.1.0, commit
``828abe8``).  The candidate is this checkout.  Each
scenario runs the baseline and the candidate one after the other, ``--repeats`` times, so
both see the same machine and the same load; the table gives the range of each.

Scenarios (``NAME-IDLE|BUSY-PROGRAMS``):

* ``export-idle-N`` / ``export-busy-N``: headless, OTLP/gRPC to a local rotel every 10 s,
  1 s interval, N extra socket filters loaded (``busy``: each runs once a second);
* ``live-busy-N``: ``--live`` in a tmux pane, measured after ``--live-settle`` seconds so the
  120-pass chart history is full.

CPU is % of one core over ``--seconds`` (utime+stime of the process), memory is the peak
resident size (VmHWM, start-up included).  Nothing is asserted; the targets are printed
beside the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import bench_process as bp
from _bench import Rotel, checkout, load_average, loaded_filters, machine, span

RELEASE_0_1_0 = "828abe8"
"""The commit of release 0.1.0."""

DEFAULT_SCENARIOS = (
    "export-idle-1000,export-busy-1000,live-busy-1000,"
    "export-idle-100,export-idle-2000,export-idle-5000"
)

TARGETS = {
    "export-idle-1000": "<= 0.6 %, <= 55 MB",
    "export-busy-1000": "<= 1 %",
    "export-idle-5000": "<= 3 %, <= 100 MB",
    "export-busy-5000": "<= 3 %, <= 100 MB",
    "live-busy-1000": "<= 1.5 %, <= 60 MB",
}


def parse(name: str) -> tuple[str, bool, int]:
    try:
        mode, load, count = name.split("-")
        if mode not in ("export", "live") or load not in ("idle", "busy"):
            raise ValueError
        return mode, load == "busy", int(count)
    except ValueError:
        raise SystemExit(
            f"bad scenario {name!r}: MODE-idle|busy-PROGRAMS, MODE export or live"
        ) from None


def run_one(mode: str, rotel: Rotel, settle: float, seconds: float, code: Path | None) -> bp.Result:
    bp.settings["code"] = code
    common = ["--interval", "1"]
    if mode == "export":
        return bp.run_headless(common + bp.otlp_grpc_flags(rotel, 10), settle, seconds)
    return bp.run_live(common + ["--live"], settle, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--baseline", default=RELEASE_0_1_0, help="checkout directory or git commit (0.1.0)"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--settle", type=float, default=15)
    parser.add_argument("--live-settle", type=float, default=125)
    parser.add_argument("--scenarios", default=DEFAULT_SCENARIOS)
    args = parser.parse_args()
    if args.repeats < 1 or args.seconds <= 0 or args.settle < 0:
        raise SystemExit("--repeats must be >= 1, --seconds > 0, --settle >= 0")
    scenarios = [(name, *parse(name)) for name in args.scenarios.split(",")]
    candidate = Path(__file__).resolve().parent.parent
    with checkout(args.baseline, candidate) as baseline:
        compare(args, scenarios, baseline, candidate)


def compare(
    args: argparse.Namespace,
    scenarios: list[tuple[str, str, bool, int]],
    baseline: Path,
    candidate: Path,
) -> None:
    print(f"bpftop-otel as a sidecar: {machine()}; {load_average()}")
    print(
        f"baseline {baseline}, candidate {candidate}; {args.repeats} runs each, alternating; "
        f"CPU over {args.seconds:g} s after {args.settle:g} s ({args.live_settle:g} s live)"
    )
    print(
        f"{'scenario':>18} | {'code':>9} | {'CPU % of one core':>17} | {'peak RSS MB':>11} | target"
    )
    with Rotel() as rotel:
        for name, mode, is_busy, count in scenarios:
            settle = args.live_settle if mode == "live" else args.settle
            results: dict[str, list[bp.Result]] = {"baseline": [], "candidate": []}
            with loaded_filters(count) as fds, bp.busy(fds, is_busy):
                for _ in range(args.repeats):
                    for label, code in (("baseline", baseline), ("candidate", candidate)):
                        results[label].append(run_one(mode, rotel, settle, args.seconds, code))
            for label in ("baseline", "candidate"):
                cpu = span([r[0] for r in results[label]], 2)
                rss = span([r[1] for r in results[label]], 1)
                target = TARGETS.get(name, "") if label == "candidate" else ""
                print(f"{name:>18} | {label:>9} | {cpu:>17} | {rss:>11} | {target}", flush=True)
    print(load_average())


if __name__ == "__main__":
    main()
