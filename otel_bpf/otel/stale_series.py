"""Releasing the SDK's memory of series that are no longer observed.

Why: the OpenTelemetry Python SDK keeps one aggregation per attribute set per observable
instrument per reader for the life of the process (``MetricReaderStorage`` only resets
*synchronous* instruments on delta collection; "asynchronous instruments keep their state").
BPF program ids churn on every reload, so without help a long-lived exporter accumulates one
entry per program ever seen: memory grows without bound, and from SDK 1.45.2 on, once an
instrument has seen 2000 attribute sets (its cardinality limit), every new program is folded
into a single ``otel.metric.overflow=true`` point.

What: after each callback of our own observable instruments, drop the aggregations whose
attributes that callback did not observe.  An asynchronous aggregation that got no measurement
in a collection exports nothing anyway (its value is None), so the export is unchanged; a
series that comes back (a program of the same name after a reload, in ``by_name_type``) starts
afresh with a new start time, which is what a counter reset should look like.

How safe: the callbacks of a collection run while the SDK's measurement consumer holds its
lock, and every reader's collection takes that lock, so no other collection can be reading the
dictionaries we prune; each dictionary is also mutated under its own ``_lock`` as the SDK does.
These are private SDK structures: everything is looked up defensively, and when the layout is
not the expected one (another SDK version, a non-SDK provider) pruning turns itself off with
one warning and the exporter keeps working with the SDK's own behaviour.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

_log = logging.getLogger(__name__)

AttributeKey = frozenset[tuple[str, Any]]


def attribute_key(attributes: Mapping[str, Any] | None) -> AttributeKey:
    """A hashable identity of an attribute set."""
    return frozenset((attributes or {}).items())


def _sdk_provider(meter_provider: object) -> object:
    # The API's proxy provider (global provider not set yet, or set later) wraps the SDK one.
    real = getattr(meter_provider, "_real_meter_provider", None)
    return real if real is not None else meter_provider


class StaleSeriesPruner:
    """Drops the per-attribute-set state the SDK holds for series we stopped observing."""

    def __init__(self, meter_provider: object) -> None:
        self._provider = meter_provider
        self._disabled_reason: str | None = None
        self._last_observed: dict[object, frozenset[int]] = {}
        """Hashes of what each instrument's callback observed at its last collection (the
        sets themselves would hold about 2 MB at 1,000 programs)."""
        self.released = 0
        """Aggregations released so far (all instruments and readers)."""

    @property
    def active(self) -> bool:
        """Pruning works with this provider (False after an unexpected SDK layout)."""
        return self._disabled_reason is None

    def _matches_for(self, instrument: object) -> list[object] | None:
        provider = _sdk_provider(self._provider)
        consumer = getattr(provider, "_measurement_consumer", None)
        storages = getattr(consumer, "_reader_storages", None)
        if not isinstance(storages, Mapping):
            return None
        matches: list[object] = []
        for storage in list(storages.values()):
            per_instrument = getattr(storage, "_instrument_view_instrument_matches", None)
            if not isinstance(per_instrument, Mapping):
                return None
            matches.extend(per_instrument.get(instrument, ()))
        return matches

    def prune(self, instrument: object, observed: Iterable[AttributeKey]) -> None:
        """Forget every attribute set of ``instrument`` that is not in ``observed``."""
        if self._disabled_reason is not None:
            return
        # An instrument created through the API's proxy (global provider set later) is
        # stored by the SDK under the real instrument the proxy wraps.
        instrument = getattr(instrument, "_real_instrument", None) or instrument
        try:
            matches = self._matches_for(instrument)
            if matches is None:
                if getattr(_sdk_provider(self._provider), "_measurement_consumer", None) is None:
                    # Not an SDK provider (no-op or proxy without a real one): nothing to do.
                    return
                self._disable("the SDK's reader storage has an unexpected layout")
                return
            keep = set(observed)
            hashes = frozenset(map(hash, keep))
            last = self._last_observed.get(instrument)
            self._last_observed[instrument] = hashes
            if last is not None and last <= hashes:
                # The SDK holds only what this callback observed before (or a View's
                # projection of it), all of it observed again: nothing to release, and
                # the scan of every aggregation is skipped (the common collection).  A
                # 64-bit hash collision could only postpone a release to the next scan.
                return
            for match in matches:
                self._prune_match(match, keep)
        except Exception as exc:  # a private-layout surprise must never break a collection
            self._disable(f"{type(exc).__name__}: {exc}")

    def _prune_match(self, match: object, keep: set[AttributeKey]) -> None:
        table = getattr(match, "_attributes_aggregation", None)
        lock = getattr(match, "_lock", None)
        view = getattr(match, "_view", None)
        if not isinstance(table, dict) or lock is None:
            raise TypeError("no _attributes_aggregation dict on the view instrument match")
        view_keys = getattr(view, "_attribute_keys", None)
        if view_keys is not None:
            # A user View that keeps only some attribute keys aggregates on those.
            keep = {frozenset((k, v) for k, v in key if k in view_keys) for key in keep}
        with lock:
            stale = [
                hashed
                for hashed, aggregation in table.items()
                if attribute_key(getattr(aggregation, "_attributes", None)) not in keep
            ]
            for hashed in stale:
                del table[hashed]
        self.released += len(stale)

    def _disable(self, reason: str) -> None:
        self._disabled_reason = reason
        _log.warning(
            "cannot release the OpenTelemetry SDK's state of unloaded BPF programs (%s); "
            "series of programs loaded after the SDK's cardinality limit may be merged into "
            "otel.metric.overflow",
            reason,
        )
