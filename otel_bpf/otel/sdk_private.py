"""Every look into the OpenTelemetry Python SDK's private structures, in one place.

The SDK offers no public way to ask whether a ``MeterProvider`` was shut down, how often its
periodic readers export, or to release the state it keeps per attribute set of an
asynchronous instrument (see :mod:`otel_bpf.otel.stale_series`).  Those answers come from
private attributes, all of them read here, defensively: a layout this module does not
recognise gives "unknown" (None, False), never an exception in a collection.
``tests/unit/test_sdk_private.py`` checks each attribute against the installed SDK and names
its version when one is gone; pyproject.toml states the SDK versions tested
(:data:`TESTED_SDK_RANGE`).  The other reliances on a private layout are the CLI's exporter
subclasses: :mod:`otel_bpf.cli.otlp_grpc` (one deadline per export, and our encoder through
``_translate_data``) and :mod:`otel_bpf.cli.otlp_http` (our encoder around ``_export_batch``);
the same test module checks the exporter attributes they use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

TESTED_SDK_RANGE = ((1, 27), (1, 46))
"""The opentelemetry-sdk releases whose private layout this module was checked against:
from the first up to (not including) the second."""
TESTED_SDK = ">=1.27,<1.46"


def sdk_provider(meter_provider: object) -> object:
    """The SDK provider behind the API's proxy provider (global provider set later), or
    ``meter_provider`` itself."""
    real = getattr(meter_provider, "_real_meter_provider", None)
    return real if real is not None else meter_provider


def sdk_instrument(instrument: object) -> object:
    """The SDK instrument behind an API proxy instrument, or ``instrument`` itself."""
    return getattr(instrument, "_real_instrument", None) or instrument


def provider_is_shut_down(provider: object) -> bool:
    """The SDK MeterProvider's ``shutdown()`` has been called (False for other providers).

    The SDK sets its private ``_shutdown`` flag first thing in ``shutdown()``; there is no
    public hook, and waiting for process exit would keep stats on for nothing.
    """
    return bool(getattr(sdk_provider(provider), "_shutdown", False))


_SHUTDOWN_HOOKS = "_otel_bpf_shutdown_hooks"


def call_after_shutdown(provider: object, hook: Callable[[], None]) -> bool:
    """Call ``hook`` once the SDK provider's ``shutdown()`` has run (returned or raised).

    The SDK has no shutdown listener, and a reader that does not collect at shutdown (the
    Prometheus reader, ``InMemoryMetricReader``) runs no callback that could notice it, so the
    provider's ``shutdown`` is wrapped, once per provider; ``hook`` is added once however often
    this is called with it.  False when ``provider`` is not an SDK provider (nothing wrapped).
    """
    real = sdk_provider(provider)
    original = getattr(real, "shutdown", None)
    if not callable(original) or not hasattr(real, "_shutdown"):
        return False
    hooks: list[Callable[[], None]] | None = vars(real).get(_SHUTDOWN_HOOKS)
    if hooks is None:
        hooks = []
        run_hooks = hooks

        def shutdown(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            finally:
                for each in list(run_hooks):
                    each()

        setattr(real, "shutdown", shutdown)  # noqa: B010 (an instance attribute on purpose)
        setattr(real, _SHUTDOWN_HOOKS, hooks)
    if hook not in hooks:
        hooks.append(hook)
    return True


def reader_export_interval(provider: object) -> float | None:
    """The shortest export interval (s) among the provider's periodic readers, if any."""
    readers = getattr(sdk_provider(provider), "_metric_readers", None) or ()
    intervals = []
    for reader in readers:
        millis = getattr(reader, "_export_interval_millis", None)
        if isinstance(millis, (int, float)) and math.isfinite(millis) and millis > 0:
            intervals.append(millis / 1000.0)
    return min(intervals) if intervals else None


def reader_exporting(provider: object) -> bool:
    """Whether one of the provider's readers is inside an export now.

    The SDK's ``PeriodicExportingMetricReader`` holds its private ``_export_lock`` for the
    whole export (every request and retry); there is no public hook.  A reader stuck in an
    export to a collector that does not answer is still a reader: its next collection
    comes when the export gives up, so that time must not count as nobody reading.
    """
    readers = getattr(sdk_provider(provider), "_metric_readers", None) or ()
    for reader in readers:
        lock = getattr(reader, "_export_lock", None)
        locked = getattr(lock, "locked", None)
        if callable(locked) and locked():
            return True
    return False


def has_measurement_consumer(provider: object) -> bool:
    """``provider`` is (or wraps) an SDK provider that stores measurements."""
    return getattr(sdk_provider(provider), "_measurement_consumer", None) is not None


def view_instrument_matches(
    provider: object, instrument: object, *, create: bool = False
) -> list[object] | None:
    """Every reader's per-view state of ``instrument`` (an SDK instrument); None when the
    provider's storage does not have the expected layout.

    The SDK makes this state at the instrument's first measurement; ``create=True`` makes
    it now (as that measurement would), so that it can be adjusted before the first
    measurements arrive.  Call it outside a collection's storage lock: inside an
    instrument's callback, which the SDK runs before it collects the storages.
    """
    consumer = getattr(sdk_provider(provider), "_measurement_consumer", None)
    storages = getattr(consumer, "_reader_storages", None)
    if not isinstance(storages, Mapping):
        return None
    matches: list[object] = []
    for storage in list(storages.values()):
        per_instrument = getattr(storage, "_instrument_view_instrument_matches", None)
        if not isinstance(per_instrument, Mapping):
            return None
        found = per_instrument.get(instrument)
        if found is None and create:
            make = getattr(storage, "_get_or_init_view_instrument_match", None)
            if not callable(make):
                return None
            found = make(instrument)
        matches.extend(found or ())
    return matches


def match_aggregations(match: object) -> tuple[dict[Any, Any], Any, Any]:
    """A view match's ``(aggregations by hashed attributes, its lock, the View's attribute
    keys or None)``; TypeError on another layout."""
    table = getattr(match, "_attributes_aggregation", None)
    lock = getattr(match, "_lock", None)
    if not isinstance(table, dict) or lock is None:
        raise TypeError("no _attributes_aggregation dict on the view instrument match")
    view_keys = getattr(getattr(match, "_view", None), "_attribute_keys", None)
    return table, lock, view_keys


def match_cardinality_limit(match: object) -> tuple[int, bool]:
    """A view match's ``(cardinality limit, whether a View set it explicitly)``; TypeError on
    another layout.  The SDK (1.45) folds attribute sets beyond the limit (2000 unless a View
    or the reader says otherwise) into one ``otel.metric.overflow`` point."""
    limit = getattr(match, "_cardinality_limit", None)
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError("no _cardinality_limit on the view instrument match")
    explicit = getattr(getattr(match, "_view", None), "_aggregation_cardinality_limit", None)
    return limit, explicit is not None


def set_match_cardinality_limit(match: object, limit: int) -> None:
    """Raise a view match's cardinality limit (checked each time a new attribute set
    arrives, so it takes effect for the measurements still to come)."""
    match_cardinality_limit(match)  # the layout check
    setattr(match, "_cardinality_limit", limit)  # noqa: B010 (a private attribute on purpose)


def aggregation_attributes(aggregation: object) -> Mapping[str, Any] | None:
    """The attribute set an aggregation was created for."""
    attributes: Mapping[str, Any] | None = getattr(aggregation, "_attributes", None)
    return attributes
