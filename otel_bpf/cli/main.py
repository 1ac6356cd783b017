"""``bpftop-otel``: sample every BPF program, export the figures, optionally show or print them.

One run: parse and validate (exit 2 on bad input), read the program list once (exit 77
naming the missing privileges when the kernel refuses), build the meter provider, start
the demo workload if asked, then one sampler in an anyio task group with its consumers:
``BpfMetricsPlugin`` when there is a provider, JSON Lines, the live view, the tick counter
for ``--count``, and the signal watcher.  Stats are held by the plugin while its provider
collects, and by this module for as long as JSON or the live view reads the numbers (or
when nothing exports).  Every way out (``--count``, SIGTERM/SIGINT, ``q`` in the live view,
an error, a closed stdout) runs the same cleanup in order: final export (bounded), stats
released, demo workload stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack, contextmanager
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.lowlevel

from otel_bpf import __version__
from otel_bpf.cli import args as cli_args
from otel_bpf.cli import jsonl
from otel_bpf.cli.config import Config, ConfigError, resolve
from otel_bpf.cli.exporters import (
    PROMETHEUS_EXTRA_MISSING,
    ExporterError,
    Telemetry,
    build_telemetry,
)
from otel_bpf.cli.logs import ExportLogGate, drain_stderr, setup_logging, write_stderr
from otel_bpf.cli.output import LineOutput, OutputError, check_open, raise_for
from otel_bpf.cli.signals import cancel_on_signal
from otel_bpf.kernel.errors import BpfError, BpfPermissionError

if TYPE_CHECKING:
    from otel_bpf.kernel.source import ProgramSource, SourceOptions
    from otel_bpf.kernel.stats import StatsSwitch
    from otel_bpf.otel.options import MetricsOptions
    from otel_bpf.sampler import Sampler
    from otel_bpf.snapshot import Snapshot

log = logging.getLogger("bpftop-otel")

FINAL_EXPORT_TIMEOUT = 10.0
"""Seconds the final collection and export may take at exit."""

FINAL_EXPORT_POLL = 0.05
"""Seconds between looks at the final export (and at a second signal) while it runs."""

OUTPUT_STALL_AT_COUNT = 10.0
"""At the end of ``--count``: seconds the --json reader may take no bytes before the lines
still buffered are given up."""
OUTPUT_STALL_AT_SIGNAL = 0.2
"""After a signal (or another early end): the same, short, so the exit stays prompt."""

PRIVILEGE_HINT = "bpftop-otel needs CAP_SYS_ADMIN and CAP_BPF (CAP_PERFMON for some program types)"

E = TypeVar("E", bound=BaseException)


class _Terminated(Exception):
    """SIGTERM or SIGHUP arrived before the event loop started (or after it ended)."""


QUIT_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


class _SignalGate:
    """Where SIGTERM, SIGHUP and SIGINT go while no signal receiver of the run holds them.

    Outside the event loop (start-up, the provider's shutdown) the handler raises
    :class:`_Terminated`: the code there is plain and unwinds cleanly.  Inside the loop an
    exception raised by a handler lands wherever the main thread happens to be, possibly in
    the loop's own bookkeeping, which can leave an anyio worker thread alive and the process
    hanging at exit; there the handler only hands the signal to the loop
    (``call_soon_threadsafe`` is safe in a signal handler).  That covers the start of the run
    before its watcher is up, and the cleanup after the watcher (or the live view) let go of
    the signals: a second signal then cuts the final export short instead of killing the
    process with stats and the terminal left as they were.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.run: _Run | None = None

    def handle(self, signum: int, frame: FrameType | None) -> None:
        loop, run = self.loop, self.run
        if loop is None or run is None or loop.is_closed():
            raise _Terminated
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(run.request_stop, signum)

    def install(self) -> None:
        for signum in QUIT_SIGNALS:
            signal.signal(signum, self.handle)

    @contextmanager
    def inside(self, run: _Run) -> Iterator[None]:
        """The handler hands signals to ``run`` on this thread's running loop."""
        self.loop, self.run = asyncio.get_running_loop(), run
        self.install()
        try:
            yield
        finally:
            self.loop = self.run = None


_gate = _SignalGate()


def _error(message: str) -> None:
    # After the log lines still queued for stderr, not before them.
    write_stderr(f"{cli_args.PROG}: error: {message}\n")


def _find(exc: BaseException, kind: type[E]) -> E | None:
    """The first exception of ``kind`` in ``exc`` or, for an exception group, its leaves."""
    if isinstance(exc, kind):
        return exc
    for sub in getattr(exc, "exceptions", ()) or ():
        found = _find(sub, kind)
        if found is not None:
            return found
    return None


def _only(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """True when every leaf of ``exc`` is one of ``kinds``."""
    subs = getattr(exc, "exceptions", None)
    if subs:
        return all(_only(sub, kinds) for sub in subs)
    return isinstance(exc, kinds)


def _metrics_options(config: Config) -> MetricsOptions:
    from otel_bpf.otel.options import MetricsOptions

    return MetricsOptions(
        attributes="by_name_type" if config.attributes == "by-name-type" else "per_program",
        types=config.types,
        names=config.names,
        owners=config.owner_names,
        derived_gauges=config.derived_gauges,
        owner_series=config.owner_series,
        attachment_series=config.attachment_series,
        # --per-cpu is for every consumer of the run: --json, and the exporters.
        per_cpu=config.per_cpu,
    )


class _Run:
    """State of one run shared by its tasks."""

    def __init__(self, config: Config, telemetry: Telemetry, options: MetricsOptions) -> None:
        self.config = config
        self.telemetry = telemetry
        # --type/--name/--owner select programs for --json as they do for the exporters.
        self.selected = (
            options.matches if (config.types or config.names or config.owner_names) else None
        )
        self.ticks = 0
        self.announced = False
        self.output: LineOutput | None = None
        self.scope: anyio.CancelScope | None = None
        self.token: anyio.lowlevel.EventLoopToken | None = None
        self.stop_signals = 0
        """Quit signals handed over by :class:`_SignalGate` (not those of the watcher)."""
        self.hurry = anyio.Event()
        """Set by a quit signal during the cleanup: the final export is cut short."""

    def request_stop(self, signum: int) -> None:
        """On the loop: a quit signal the gate handed over (see :class:`_SignalGate`)."""
        self.stop_signals += 1
        name = signal.Signals(signum).name
        if self.scope is None or not self.scope.cancel_called:
            log.info("received %s: stopping (final export, stats off)", name)
        else:
            log.info("received %s again: the final export is cut short", name)
            self.hurry.set()
        if self.scope is not None:
            self.scope.cancel()

    def output_failed(self) -> None:
        """In the output's thread: end the run (the error is raised after cleanup)."""
        scope = self.scope
        if scope is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                anyio.from_thread.run_sync(scope.cancel, token=self.token)

    @property
    def count_reached(self) -> bool:
        return self.config.count is not None and self.ticks >= self.config.count

    def announce(self, snap: Snapshot) -> None:
        """Log once what is being sampled and how (the path and the stats state)."""
        if self.announced:
            return
        self.announced = True
        log.info(
            "first pass: %d programs read via %s, stats %s (online CPUs %d)",
            len(snap.programs),
            snap.sampling_path,
            snap.stats.describe(),
            snap.online_cpus,
        )
        if not snap.stats.enabled:
            log.warning("BPF stats are off: run_time_ns and run_cnt do not advance")

    def tick(self, snap: Snapshot, scope: anyio.CancelScope) -> None:
        self.ticks += 1
        self.announce(snap)
        log.debug(
            "tick %d: %d programs, %d read errors", snap.seq, len(snap.programs), len(snap.errors)
        )
        for err in snap.errors:
            log.debug("read error: %s", err)
        if self.config.count is not None and self.ticks >= self.config.count:
            scope.cancel()

    async def consume(self, sampler: Sampler, scope: anyio.CancelScope) -> None:
        """Follow the sampler tick by tick: JSON Lines when asked, and the --count limit."""
        from otel_bpf.broadcast import BroadcastClosed

        seq = 0
        while True:
            try:
                snap = await sampler.wait_next(seq)
            except BroadcastClosed:  # the sampler stopped: the run is ending
                return
            seq = snap.seq
            if self.output is not None:
                self.output.offer(jsonl.snapshot_lines(snap, self.selected))
            self.tick(snap, scope)

    async def live(self, sampler: Sampler, scope: anyio.CancelScope) -> None:
        from otel_bpf.live.app import run_live
        from otel_bpf.live.options import LiveOptions

        await run_live(sampler, LiveOptions(ascii=self.config.ascii))
        scope.cancel()


async def _final_export(telemetry: Telemetry, hurry: anyio.Event | None = None) -> None:
    """Flush and shut the provider down: shielded from cancellation, bounded in time, and
    cut short when ``hurry`` is set (a second quit signal).

    The work runs in a daemon thread, not an anyio worker: a worker thread left behind by
    a timeout would keep the process alive at exit (anyio's workers are not daemons).
    """
    if telemetry.provider is None:
        return
    done = threading.Event()
    failure: list[BaseException] = []

    def shutdown() -> None:
        try:
            telemetry.shutdown(FINAL_EXPORT_TIMEOUT)
        except Exception as exc:
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=shutdown, name="bpftop-otel final export", daemon=True).start()
    finished = False
    with anyio.CancelScope(shield=True), anyio.move_on_after(FINAL_EXPORT_TIMEOUT):
        # Polled on the loop rather than waited for in a worker thread: the wait must end
        # at once when ``hurry`` is set.
        while not (finished := done.is_set()):
            if hurry is not None and hurry.is_set():
                break
            await anyio.sleep(FINAL_EXPORT_POLL)
    if hurry is not None and hurry.is_set() and not finished:
        telemetry.abort()
        log.warning("final export cut short by a second signal")
        return
    if not finished:
        # Stop the exporter's retry loop so nothing more is attempted during exit.
        telemetry.abort()
        log.warning("final export did not finish within %.0f s", FINAL_EXPORT_TIMEOUT)
    elif failure:
        log.warning("final export failed: %s", failure[0])
    elif telemetry.otlp is not None and telemetry.otlp.last_ok is False:
        reason = telemetry.otlp.last_reason or "the collector did not take it"
        log.warning("final export to %s failed: %s", ", ".join(telemetry.targets), reason)
    elif telemetry.otlp is not None and telemetry.otlp.last_ok is None:
        log.info("nothing was exported (OTEL_SDK_DISABLED?)")
    else:
        log.info("final export done")


def _source_options(config: Config, options: MetricsOptions) -> SourceOptions:
    from otel_bpf.kernel.source import SourceOptions

    # The live view shows owners, maps and attach points; a source reads what it was opened
    # with.  Attach discovery runs on its own slower cadence (10 s, or when the programs
    # change), so the per-second pass of the view does not pay for it.
    return SourceOptions(
        owners=_reads_owners(config, options) or config.live,
        maps=_reads_maps(config, options) or config.live,
        per_cpu=config.per_cpu,
        attachments=config.attachments or options.needs_attachments or config.live,
    )


@contextmanager
def _demo_workload() -> Iterator[None]:
    """The demo workload for the run, with its program ids logged (tests read them)."""
    from otel_bpf.demo import DemoWorkload

    started = False
    try:
        with DemoWorkload() as demo:
            started = True
            log.info(
                "demo workload running (pid %d): %s",
                demo.pid,
                ", ".join(f"{name} id {prog_id}" for name, prog_id in demo.program_ids.items()),
            )
            yield
    finally:
        if started:
            log.info("demo workload stopped")


def _reads_owners(config: Config, options: MetricsOptions) -> bool:
    return config.owners or options.needs_owners


def _reads_maps(config: Config, options: MetricsOptions) -> bool:
    # Map memory is only exported, never shown: read maps only when something exports.
    return options.needs_maps and bool(config.exporters)


async def _run(
    config: Config,
    telemetry: Telemetry,
    options: MetricsOptions,
    source: ProgramSource,
    switch: StatsSwitch,
) -> int:
    from otel_bpf.kernel.stats import stats_enabled, stats_state
    from otel_bpf.otel.plugin import FED_HISTORY, passes_on_collection
    from otel_bpf.sampler import Sampler

    run = _Run(config, telemetry, options)
    sampler: Sampler | None = None
    run.token = anyio.lowlevel.current_token()
    if config.json:
        run.output = LineOutput(1, on_error=run.output_failed)
    with _gate.inside(run), ExitStack() as sync_stack:
        if config.demo:
            sync_stack.enter_context(_demo_workload())
        try:
            async with AsyncExitStack() as stack:
                local = config.json or config.live or telemetry.provider is None
                if local:
                    # JSON and the live view need counting stats whatever the exporter's
                    # readers do; the switch is refcounted, the plugin shares the fd.
                    stack.enter_context(stats_enabled(switch))
                sampler = Sampler(
                    interval=config.interval,
                    # The plugin and JSON take each snapshot as it comes; the live view keeps
                    # its charts' figures itself (live/history.py).
                    history=FED_HISTORY,
                    source=source,
                )
                # Headless with counters only, no tick has a reader: each collection takes
                # its pass (at most one per --interval) and no sampler loop runs.
                on_collection = (
                    telemetry.provider is not None
                    and not local
                    and config.count is None
                    and passes_on_collection(options)
                )
                if telemetry.provider is not None:
                    from otel_bpf.otel.plugin import BpfMetricsPlugin

                    plugin = BpfMetricsPlugin(
                        telemetry.provider,
                        options=options,
                        sampler=sampler,
                        stats_holder=switch,
                        sample_on_collection=on_collection,
                    )
                    await stack.enter_async_context(plugin)
                    # Exit order is reversed: the final export runs while the plugin's
                    # instruments are still open, then the plugin switches stats off.
                    stack.push_async_callback(_final_export, telemetry, run.hurry)
                async with anyio.create_task_group() as tg:
                    run.scope = tg.cancel_scope
                    if run.stop_signals:  # a signal came during the start
                        tg.cancel_scope.cancel()
                    if not config.live:
                        # The live view handles SIGINT/SIGTERM itself (it must restore the
                        # terminal first); a second receiver would replace its handlers.
                        tg.start_soon(cancel_on_signal, tg.cancel_scope)
                    targets = (
                        "exporting to " + ", ".join(telemetry.targets)
                        if telemetry.targets
                        else "no exporter"
                    )
                    if on_collection:
                        latest = sampler.latest
                        if latest is not None:
                            run.announce(latest)
                        log.info(
                            "sampling every %g s at most, when metrics are collected; %s",
                            config.interval,
                            targets,
                        )
                        await anyio.sleep_forever()
                    await tg.start(sampler.run)
                    log.info("sampling every %g s; %s", config.interval, targets)
                    tg.start_soon(run.consume, sampler, tg.cancel_scope)
                    if config.live:
                        tg.start_soon(run.live, sampler, tg.cancel_scope)
                # The watcher or the live view held the signals and let go of them (asyncio
                # then leaves the default actions): the cleanup below is covered again.
                _gate.install()
                if run.output is not None:
                    # Before the final export: the lines of the last ticks come first.
                    stall = OUTPUT_STALL_AT_COUNT if run.count_reached else OUTPUT_STALL_AT_SIGNAL
                    run.output.close(stall)
        finally:
            state = stats_state()
            log.info(
                "stopped after %d ticks (%d passes); stats now %s",
                run.ticks,
                sampler.passes if sampler is not None else 0,
                state.describe(),
            )
    if run.output is not None and run.output.error is not None:
        raise_for(run.output.error)
    return cli_args.EXIT_OK


def _guard(fn: Callable[[], int]) -> int:
    """Run ``fn`` turning expected failures into one ``bpftop-otel: error:`` line."""
    try:
        return fn()
    except BaseException as exc:
        perm = _find(exc, BpfPermissionError)
        if perm is not None:
            _error(f"{perm.strerror or perm}; {PRIVILEGE_HINT}")
            return cli_args.EXIT_NOPERM
        bpf = _find(exc, BpfError)
        if bpf is not None:
            _error(str(bpf.strerror or bpf))
            return cli_args.EXIT_RUNTIME
        output = _find(exc, OutputError)
        if output is not None:
            _error(str(output))
            return cli_args.EXIT_RUNTIME
        exporter = _find(exc, ExporterError)
        if exporter is not None:
            _error(str(exporter))
            return cli_args.EXIT_RUNTIME
        if "otel_bpf.demo" in sys.modules:
            from otel_bpf.demo import DemoWorkloadError

            demo = _find(exc, DemoWorkloadError)
            if demo is not None:
                _error(f"demo workload: {demo}")
                return cli_args.EXIT_RUNTIME
        if _only(exc, (KeyboardInterrupt, _Terminated)):
            return cli_args.EXIT_OK
        broken = _find(exc, BrokenPipeError)
        if broken is not None:
            # stdout went away (| head): stop quietly, and keep Python from complaining
            # again when it flushes stdout at exit.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return cli_args.EXIT_OK
        raise


def _check_extras(config: Config) -> None:
    """The optional extras the chosen exporters need, checked before the kernel is touched:
    a missing extra is a usage problem, found before any BPF program or iterator is loaded."""
    if "prometheus" in config.exporters:
        try:
            import opentelemetry.exporter.prometheus  # noqa: F401
            import prometheus_client  # noqa: F401
        except ImportError:
            raise ExporterError(PROMETHEUS_EXTRA_MISSING) from None


def _preflight() -> None:
    """One read of the program list: fails early, with the privileges, when it cannot work."""
    from otel_bpf.kernel.programs import read_programs
    from otel_bpf.kernel.source import SourceOptions

    read_programs(SourceOptions(memlock=False))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bpftop-otel`` console script; returns the exit status."""
    ns = cli_args.parse_args(argv)
    try:
        config = resolve(ns)
    except ConfigError as exc:
        _error(str(exc))
        return cli_args.EXIT_USAGE

    try:
        options = _metrics_options(config)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        # MetricsOptions names its field; on the command line that field is --type.
        if message.startswith("types: "):
            _error("--type: " + message.removeprefix("types: "))
        else:
            _error(f"--type/--name/--owner: {message}")
        return cli_args.EXIT_USAGE

    previous_sigterm = signal.signal(signal.SIGTERM, _gate.handle)
    previous_sighup = signal.signal(signal.SIGHUP, _gate.handle)
    previous_sigint = signal.getsignal(signal.SIGINT)
    gate = ExportLogGate()
    handler = setup_logging(config.log_level, gate)
    # The handler stays installed until the interpreter exits: an export abandoned by the
    # final-export timeout may still log, and must go through the same filter.
    try:
        if config.live:
            from otel_bpf.live.terminal import check_terminal

            problem = check_terminal()
            if problem is not None:
                _error(problem)
                return cli_args.EXIT_USAGE
        return _guard(lambda: _start(config, gate, options))
    finally:
        handler.flush()
        drain_stderr()
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGHUP, previous_sighup)
        signal.signal(signal.SIGINT, previous_sigint)


def _start(config: Config, gate: ExportLogGate, options: MetricsOptions) -> int:
    if config.json:
        check_open(1)
    log.info("bpftop-otel %s starting (pid %d)", __version__, os.getpid())
    _check_extras(config)
    _preflight()
    from otel_bpf.kernel.open_source import open_source
    from otel_bpf.kernel.source import MODES
    from otel_bpf.kernel.stats import StatsSwitch

    mode = next(m for m in MODES if m == config.sampling_path)  # validated by the parser
    # The path is chosen before the provider is built: the resource names it.  open_source
    # logs the path it chose and why.
    with open_source(mode, _source_options(config, options)) as source:
        telemetry = build_telemetry(config, gate, sampling_path=source.path)
        try:
            # The run's one stats switch: the plugin, --json and the live view share its fd.
            return anyio.run(_run, config, telemetry, options, source, StatsSwitch())
        finally:
            # Normally already shut down by _run; this covers failures before the plugin
            # started.
            if telemetry.provider is not None:
                try:
                    telemetry.shutdown(1.0)
                except Exception as exc:
                    log.debug("provider shutdown: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
