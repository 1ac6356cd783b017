"""``opentelemetry-instrument`` support: BPF program metrics with no event loop of our own.

Auto-instrumentation loads every ``opentelemetry_instrumentor`` entry point into every Python
process it starts, and an exception from one instrumentor stops the loading of all later ones.
So :meth:`BpfProgramsInstrumentor.instrument` never raises for a missing privilege or kernel
feature: it logs one warning and registers nothing.  It starts no thread and no task either:
the first callback of each collection takes a fresh snapshot on the collecting thread (at most
one per ``min_interval``), and every instrument of that collection reads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection
from typing import Any

from opentelemetry import metrics
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.metrics import MeterProvider

from otel_bpf.kernel.source import SamplingPath
from otel_bpf.otel.instruments import BpfInstruments, create_instruments
from otel_bpf.otel.options import MetricsOptions
from otel_bpf.otel.plugin import StatsHolder, new_stats_holder
from otel_bpf.otel.sdk_private import call_after_shutdown, provider_is_shut_down
from otel_bpf.sampler import Sampler

__all__ = ["BpfProgramsInstrumentor"]

_log = logging.getLogger(__name__)


class BpfProgramsInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Exports the BPF program metrics on the (global or given) MeterProvider.

    ``instrument(meter_provider=None, options=MetricsOptions(), min_interval=1.0,
    stats_holder=None)``.  Kernel statistics are held on from ``instrument()`` until
    ``uninstrument()`` or the provider's ``shutdown()``, whatever its readers do at shutdown;
    ``instrument()`` on a provider already shut down registers nothing and takes nothing.
    ``stats_holder`` is the stats switch to hold; by default each ``instrument()`` makes one
    of its own (:class:`otel_bpf.kernel.stats.StatsSwitch`).
    """

    _instruments: BpfInstruments | None = None
    _instruments_provider: object = None
    _sampler: Sampler | None = None
    _holder: StatsHolder | None = None
    _held = False
    _lock = threading.Lock()

    def instrumentation_dependencies(self) -> Collection[str]:
        """Nothing: the kernel is instrumented, not a Python library."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        try:
            self._start(**kwargs)
        except Exception as exc:  # never break the other instrumentors
            self._release()
            _log.warning("BPF program metrics are not available in this process: %s", exc)

    def _start(self, **kwargs: Any) -> None:
        provider: MeterProvider = kwargs.get("meter_provider") or metrics.get_meter_provider()
        options: MetricsOptions = kwargs.get("options") or MetricsOptions()
        min_interval = float(kwargs.get("min_interval", 1.0))
        holder: StatsHolder = kwargs.get("stats_holder") or new_stats_holder()
        if provider_is_shut_down(provider):
            _log.warning(
                "BPF program metrics not registered: the meter provider is already shut down"
            )
            return
        # Each collection takes its own snapshot and the instruments read it then: no history.
        # The sampler opens open_source("auto") at its first pass, as the command line does.
        sampler = Sampler(
            history=1,
            options=options.source_options,
        )
        # One pass now: a missing privilege or kernel feature shows here, not at every export.
        try:
            sampler.sample_once()
        except BaseException:
            sampler.close()
            raise
        _log.info("BPF program metrics: sampling path %s", sampler.sampling_path)
        holder.acquire()
        self._holder = holder
        self._held = True
        # A provider whose readers do not collect at shutdown (Prometheus) never runs the
        # callback that would see it: release when its shutdown() runs.
        call_after_shutdown(provider, self._release)
        self._close_sampler()
        self._sampler = sampler
        if self._instruments is not None and self._instruments_provider is provider:
            # The API cannot remove instruments, and a second registration under the same
            # name returns the first one, so reuse them rather than creating new ones.
            self._instruments.reopen()
            return
        self._instruments_provider = provider

        def before_collect() -> None:
            self._before_collect(provider, min_interval)

        self._instruments = create_instruments(
            provider, self._history, options, before_collect=before_collect
        )

    @property
    def sampling_path(self) -> SamplingPath | None:
        """The path programs are read through while instrumented, else None."""
        sampler = self._sampler
        return sampler.sampling_path if sampler is not None else None

    def _close_sampler(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is not None:
            sampler.close()

    def _history(self) -> tuple[Any, ...]:
        sampler = self._sampler
        return sampler.history if sampler is not None else ()

    def _before_collect(self, provider: object, min_interval: float) -> None:
        if provider_is_shut_down(provider):
            # The provider's last collection: nothing will read the numbers after it.
            self._release()
            return
        sampler = self._sampler
        if sampler is None:
            return
        with self._lock:
            latest = sampler.latest
            if latest is None or time.monotonic() - latest.monotonic >= min_interval:
                try:
                    sampler.sample_once()
                except Exception as exc:  # keep the last snapshot
                    _log.warning("sampling BPF programs failed: %s", exc)

    def _release(self) -> None:
        with self._lock:
            if self._held and self._holder is not None:
                self._held = False
                try:
                    self._holder.release()
                except OSError as exc:
                    _log.warning("cannot switch BPF run-time statistics off: %s", exc)

    def _uninstrument(self, **kwargs: Any) -> None:
        if self._instruments is not None:
            self._instruments.close()
        self._release()
        self._close_sampler()
