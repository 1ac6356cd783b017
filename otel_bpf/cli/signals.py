"""SIGTERM, SIGINT and SIGHUP end a ``bpftop-otel`` run in order; cleanup then runs shielded.

The handler only cancels the run's scope; flushing the final export, switching stats off
and unloading the demo happen in the caller's ``finally`` blocks, so the same path serves
``--count``, the live view's ``q`` and a signal.
"""

from __future__ import annotations

import logging
import signal

import anyio

log = logging.getLogger("bpftop-otel")

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""SIGHUP too: its default action kills the process without the final export or stopping the
demo cleanly (a closed terminal or ``systemctl kill -s HUP`` must not lose the last numbers)."""


async def cancel_on_signal(scope: anyio.CancelScope) -> None:
    """Wait for SIGTERM, SIGINT or SIGHUP, log it once, and cancel ``scope``."""
    with anyio.open_signal_receiver(*HANDLED) as signals:
        async for signum in signals:
            log.info("received %s: stopping (final export, stats off)", signal.Signals(signum).name)
            scope.cancel()
            return
