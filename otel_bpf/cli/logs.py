"""Log lines on stderr, and export failures reported once per burst instead of per attempt.

The OTLP exporters log every retry and every failed export (with a traceback for some
errors) from ``opentelemetry.exporter.otlp...`` and the reader logs exceptions from
``opentelemetry.sdk.metrics._internal.export``.  With a collector down for an hour and a
1 s export interval that is thousands of lines.  ``ExportLogGate`` swallows those records
while an export runs on the current thread (keeping the last one as the reason), and
``BurstReportingExporter`` turns the outcome into one WARNING when exports start failing and
one INFO when they succeed again.  State is a handful of fields: memory stays bounded.

The lines go to stderr through :class:`QueuedStderr`, which never blocks the caller: a
terminal stopped with Ctrl-S or a stderr pipe nobody reads holds up only its writer thread.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TextIO

from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
)

from otel_bpf.cli.output import LineOutput

LOGGER_NAME = "bpftop-otel"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_REASON_MAX = 500

log = logging.getLogger(LOGGER_NAME)

_URL_CREDENTIALS = re.compile(r"(?<=//)[^/@\s]*@")


def safe_line(text: str) -> str:
    """``text`` fit for a terminal: every control or escape character shown escaped (a
    collector chooses its error details and reason phrases), credentials in URLs hidden."""
    from otel_bpf.live.sanitize import sanitize

    return sanitize.__wrapped__(_URL_CREDENTIALS.sub("***@", text))


class _UtcFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # One place for every line: the message is one line; a traceback (debug only)
        # keeps its line breaks, each line escaped.
        return "\n".join(safe_line(line) for line in super().format(record).split("\n"))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"{stamp}.{int(record.msecs):03d}Z"

    def formatMessage(self, record: logging.LogRecord) -> str:
        # A line break inside a message would start a forged log line.
        return super().formatMessage(record).replace("\n", "\\n").replace("\r", "\\r")

    def formatException(self, ei: Any) -> str:
        # Expected failures are reported as one line; a traceback is only for --log-level
        # debug, where the root logger's level lets the record through with it.
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            return super().formatException(ei)
        return ""


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line[:_REASON_MAX]


class ExportLogGate(logging.Filter):
    """Drops OpenTelemetry log records emitted while an export runs on this thread."""

    def __init__(self) -> None:
        super().__init__()
        self._local = threading.local()

    @contextmanager
    def exporting(self) -> Iterator[None]:
        """Records from ``opentelemetry.*`` loggers inside this block are swallowed."""
        self._local.active = True
        self._local.first = ""
        self._local.reason = ""
        try:
            yield
        finally:
            self._local.active = False

    @property
    def reason(self) -> str:
        """Why this thread's current export failed, from the records it swallowed.

        The last WARNING-or-worse message, which is the exporter's summary.  The HTTP
        exporter's summary after retries ("... due to timeout, max retries or shutdown")
        does not say what went wrong; its first message ("Transient error <cause> ...")
        does, so then both are given.
        """
        last = str(getattr(self._local, "reason", ""))
        first = str(getattr(self._local, "first", ""))
        if first and first != last and "max retries" in last:
            return _first_line(f"{last} First error: {first}")
        return last

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(self._local, "active", False):
            return True
        if not record.name.startswith("opentelemetry"):
            return True
        if record.levelno >= logging.WARNING:
            try:
                message = _first_line(record.getMessage())
            except Exception:  # a broken log call must not break the export
                message = _first_line(str(record.msg))
            if not getattr(self._local, "first", ""):
                self._local.first = message
            self._local.reason = message
        # With --log-level debug every record of every attempt is wanted.
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class BurstReportingExporter(MetricExporter):
    """Wraps a metric exporter: one WARNING per failure burst, one INFO when it resumes.

    Exceptions from the wrapped exporter become ``FAILURE`` (the reader would otherwise log
    a traceback for each export).  The exporter's own retry/backoff is unchanged.
    """

    def __init__(self, inner: MetricExporter, gate: ExportLogGate, target: str) -> None:
        super().__init__(
            preferred_temporality=inner._preferred_temporality,
            preferred_aggregation=inner._preferred_aggregation,
        )
        self._inner = inner
        self._gate = gate
        self._target = target
        self._lock = threading.Lock()
        self._failing_since: float | None = None
        self._failures = 0
        self.exports_ok = 0
        """Successful exports so far (read by tests and the shutdown log)."""
        self.last_ok: bool | None = None
        """Whether the latest export succeeded; None before the first."""
        self.last_reason = ""
        """Why the latest export failed (empty when it did not, or nothing said why)."""
        self._final = False

    @property
    def failing(self) -> bool:
        """True between the first failure of a burst and the next success."""
        return self._failing_since is not None

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        reason = ""
        with self._gate.exporting():
            try:
                result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            except Exception as exc:
                result = MetricExportResult.FAILURE
                reason = _first_line(f"{type(exc).__name__}: {exc}")
            reason = reason or self._gate.reason
        self._record(result, reason)
        return result

    def final(self) -> None:
        """The run is ending: exports from now on are the last ones, and their failure is
        reported by whoever ends the run (no burst WARNING promising a retry)."""
        self._final = True

    def _record(self, result: MetricExportResult, reason: str) -> None:
        with self._lock:
            self.last_ok = result is MetricExportResult.SUCCESS
            self.last_reason = "" if self.last_ok else reason
            if result is MetricExportResult.SUCCESS:
                self.exports_ok += 1
                if self._failing_since is not None:
                    took = time.monotonic() - self._failing_since
                    log.info(
                        "export to %s resumed after %d failed attempt%s (%.0f s)",
                        self._target,
                        self._failures,
                        "" if self._failures == 1 else "s",
                        took,
                    )
                    self._failing_since = None
                    self._failures = 0
                return
            self._failures += 1
            if self._failing_since is None and not self._final:
                self._failing_since = time.monotonic()
                log.warning(
                    "export to %s failed%s; sampling goes on and exports are retried every "
                    "interval (further failures are not logged until export resumes)",
                    self._target,
                    f": {reason}" if reason else "",
                )

    def abort(self) -> None:
        """Shut the wrapped exporter down now: a retry loop in progress gives up."""
        with self._gate.exporting():
            self._inner.shutdown(timeout_millis=0)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        with self._gate.exporting():
            return self._inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with self._gate.exporting():
            self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


LOG_BUFFER_BYTES = 1 << 20
"""Bytes of log lines held for a stderr that takes nothing (thousands of lines)."""

EXIT_STALL = 0.5
"""At exit: seconds stderr may take no bytes before the log lines still held are given up."""


class QueuedStderr:
    """Standard error for the log handler: :meth:`write` queues whole lines, a daemon thread
    writes them.

    A write to a terminal stopped with Ctrl-S (flow control is on until the live view starts)
    or to a stderr pipe nobody reads blocks; on the event loop it would stop sampling,
    exports and signal handling with it.  Lines more than ``max_bytes`` behind are dropped
    and counted, and the count is written as soon as the reader has caught up.
    """

    def __init__(self, fd: int = 2, max_bytes: int = LOG_BUFFER_BYTES) -> None:
        self._output = LineOutput(fd, max_bytes, report=False, thread_name="bpftop-otel log")
        self._reported = 0

    @property
    def dropped(self) -> int:
        """Lines dropped because stderr was ``max_bytes`` behind."""
        return self._output.dropped

    def write(self, text: str) -> int:
        dropped = self._output.dropped
        if dropped > self._reported and not self._output.buffered:
            self._reported = dropped
            self._output.offer_block(
                f"{LOGGER_NAME}: {dropped} log lines dropped: standard error was not being "
                "read\n".encode()
            )
        self._output.offer_block(text.encode("utf-8", "replace"))
        return len(text)

    def flush(self) -> None:
        """Nothing to do: the handler calls this after every record, and it must not wait
        (see :meth:`drain`)."""

    def drain(self, stall: float = EXIT_STALL) -> bool:
        """Wait while stderr takes the lines held, giving up after ``stall`` seconds without
        progress; True when all were written."""
        return self._output.wait_written(stall)

    def close(self) -> None:
        """Stop the writer once it has written what is held (without waiting for it)."""
        self._output.close(0)


_stderr: QueuedStderr | None = None
"""The queue of the handler installed by :func:`setup_logging` for stderr."""


def write_stderr(text: str) -> None:
    """``text`` to stderr after the log lines still queued (straight to stderr before
    :func:`setup_logging`)."""
    if _stderr is not None:
        _stderr.write(text)
    else:
        sys.stderr.write(text)
        sys.stderr.flush()


def drain_stderr(stall: float = EXIT_STALL) -> bool:
    """Wait (bounded, see :meth:`QueuedStderr.drain`) for the queued log lines to be written."""
    return _stderr.drain(stall) if _stderr is not None else True


def setup_logging(
    level: str, gate: ExportLogGate | None = None, *, stream: TextIO | None = None
) -> logging.Handler:
    """One handler on the root logger writing one UTC-timestamped line per record to
    ``stream`` (default: stderr, through a :class:`QueuedStderr`).  While the live view is
    up it diverts records itself."""
    global _stderr
    if stream is None:
        stream = sys.stderr
        try:
            fd = sys.stderr.fileno()
        except (AttributeError, OSError, ValueError):
            pass  # not a descriptor (a test's capture): written directly
        else:
            if _stderr is not None:
                _stderr.close()
            _stderr = QueuedStderr(fd)
            stream = _stderr  # type: ignore[assignment]
    handler: logging.Handler = logging.StreamHandler(stream)
    handler.setFormatter(_UtcFormatter(LOG_FORMAT))
    if gate is not None:
        handler.addFilter(gate)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    # grpc and urllib3 log connection chatter at INFO/DEBUG that says nothing new.
    if level != "debug":
        for noisy in ("urllib3", "grpc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler


def teardown_logging(handlers: Sequence[logging.Handler]) -> None:
    """Remove and close handlers installed by ``setup_logging``."""
    root = logging.getLogger()
    for handler in handlers:
        root.removeHandler(handler)
        handler.close()
