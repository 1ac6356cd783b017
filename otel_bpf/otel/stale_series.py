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

Nothing folded into overflow: programs loaded *at the same time* can outnumber the SDK's
cardinality limit too (2000 attribute sets per instrument unless a View says otherwise).  So
the same pass raises the limit of our instruments' view matches ahead of the number of series
their callback reports (to four times that number, in steps of 1,000): the limit is only a
threshold, memory follows the series actually held, and releasing the unloaded programs'
state above is what keeps that bounded.  A limit a user's View set explicitly is left alone.

How safe: the callbacks of a collection run while the SDK's measurement consumer holds its
lock, and every reader's collection takes that lock, so no other collection can be reading the
dictionaries we prune; each dictionary is also mutated under its own ``_lock`` as the SDK does.
These are private SDK structures: everything is looked up defensively, and when the layout is
not the expected one (another SDK version, a non-SDK provider) pruning turns itself off with
one warning and the exporter keeps working with the SDK's own behaviour.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from otel_bpf.otel.sdk_private import (
    aggregation_attributes,
    has_measurement_consumer,
    match_aggregations,
    match_cardinality_limit,
    sdk_instrument,
    set_match_cardinality_limit,
    view_instrument_matches,
)

_log = logging.getLogger(__name__)

AttributeKey = frozenset[tuple[str, Any]]

LIMIT_HEADROOM = 4
"""The cardinality limit is raised to this many times the series a callback reports once they
reach half of it: room for programs loaded before the next collection, few raises."""
LIMIT_STEP = 1000


def attribute_key(attributes: Mapping[str, Any] | None) -> AttributeKey:
    """A hashable identity of an attribute set."""
    return frozenset((attributes or {}).items())


class ObservedSeries:
    """The attribute sets one instrument's callback observes for one frame.

    Built once per frame (every collection that exports the same frame shares it): the
    hashes for the pruner's common check, the attribute sets themselves only when a scan
    needs them.  ``key_hashes`` memoises the hash of each attribute dict by identity across
    the instruments of a frame, which share one dict per program.
    """

    __slots__ = ("attributes", "hashes")

    def __init__(
        self,
        attributes: Sequence[Mapping[str, Any] | None],
        key_hashes: dict[int, int] | None = None,
    ) -> None:
        self.attributes = attributes
        memo = {} if key_hashes is None else key_hashes
        hashes = []
        for attrs in attributes:
            h = memo.get(id(attrs))
            if h is None:
                h = memo[id(attrs)] = hash(attribute_key(attrs))
            hashes.append(h)
        self.hashes = frozenset(hashes)

    def keys(self) -> set[AttributeKey]:
        """The attribute sets (built on each call: only a scan needs them)."""
        return {attribute_key(a) for a in self.attributes}


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
        self._limits: dict[object, int] = {}
        """The cardinality limit each instrument's view matches are known to have."""
        self.cardinality_limit = 0
        """The highest cardinality limit set on our instruments so far (0: none raised)."""

    @property
    def active(self) -> bool:
        """Pruning works with this provider (False after an unexpected SDK layout)."""
        return self._disabled_reason is None

    def prune(self, instrument: object, observed: ObservedSeries) -> None:
        """Forget every attribute set of ``instrument`` that is not in ``observed``."""
        if self._disabled_reason is not None:
            return
        # An instrument created through the API's proxy (global provider set later) is
        # stored by the SDK under the real instrument the proxy wraps.
        instrument = sdk_instrument(instrument)
        if self._last_observed.get(instrument) is observed.hashes:
            # The frame this instrument exported last time (a collection sooner than the
            # sampler's interval reuses the newest pass): nothing to look at at all.
            return
        try:
            # Created now if this is the instrument's first collection with measurements:
            # their number may already be above the SDK's default limit.
            matches = view_instrument_matches(self._provider, instrument, create=True)
            if matches is None:
                if not has_measurement_consumer(self._provider):
                    # Not an SDK provider (no-op or proxy without a real one): nothing to do.
                    return
                self._disable("the SDK's reader storage has an unexpected layout")
                return
            self._make_room(instrument, matches, len(observed.hashes))
            hashes = observed.hashes
            last = self._last_observed.get(instrument)
            self._last_observed[instrument] = hashes
            if last is not None and last <= hashes:
                # The SDK holds only what this callback observed before (or a View's
                # projection of it), all of it observed again: nothing to release, and
                # the scan of every aggregation is skipped (the common collection).  A
                # 64-bit hash collision could only postpone a release to the next scan.
                return
            keep = observed.keys()
            for match in matches:
                self._prune_match(match, keep)
        except Exception as exc:  # a private-layout surprise must never break a collection
            self._disable(f"{type(exc).__name__}: {exc}")

    def _make_room(self, instrument: object, matches: list[object], series: int) -> None:
        """Raise the cardinality limit of ``instrument``'s view matches before ``series``
        observations reach it (the SDK consumes them after this callback returns)."""
        known = self._limits.get(instrument)
        if known is not None and series * 2 < known:
            return  # the common collection: nothing to look at
        wanted = -(-series * LIMIT_HEADROOM // LIMIT_STEP) * LIMIT_STEP
        lowest = None
        raised = False
        for match in matches:
            limit, explicit = match_cardinality_limit(match)
            if not explicit and series * 2 >= limit and wanted > limit:
                set_match_cardinality_limit(match, wanted)
                limit, raised = wanted, True
            lowest = limit if lowest is None else min(lowest, limit)
        if lowest is None:
            return  # no reader has this instrument (yet)
        self._limits[instrument] = lowest
        if raised and wanted > self.cardinality_limit:
            # One line per step for all our instruments, not one per instrument.
            self.cardinality_limit = wanted
            _log.info(
                "OpenTelemetry cardinality limit of the BPF program metrics raised to %d "
                "(%d series reported): no program is folded into otel.metric.overflow",
                wanted,
                series,
            )

    def _prune_match(self, match: object, keep: set[AttributeKey]) -> None:
        table, lock, view_keys = match_aggregations(match)
        if view_keys is not None:
            # A user View that keeps only some attribute keys aggregates on those.
            keep = {frozenset((k, v) for k, v in key if k in view_keys) for key in keep}
        with lock:
            stale = [
                hashed
                for hashed, aggregation in table.items()
                if attribute_key(aggregation_attributes(aggregation)) not in keep
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
