"""Newest-value fan-out: one producer, any number of consumers, no buffers.

Sample data is a state, not a message log: a consumer that falls behind only needs the newest
value.  So the producer keeps one cell (value + version) and one one-shot event that is set and
replaced on every publish; each subscription remembers the last version it returned.  Memory
does not depend on the number of values published or on how slow a consumer is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import Generic, TypeVar

import anyio

T = TypeVar("T")


class BroadcastClosed(Exception):
    """The producer stopped; no further value will come."""


class Broadcast(Generic[T]):
    """A latest-value cell that consumers can wait on.

    ``publish`` and the waiting methods must be called from the event loop that runs the
    producer.  ``latest`` and ``version`` may be read from any thread: each is replaced by a
    single assignment.
    """

    def __init__(self) -> None:
        self._value: T | None = None
        self._version = 0
        self._changed: anyio.Event | None = None
        self._closed = False

    @property
    def latest(self) -> T | None:
        """The newest value, or None before the first publish."""
        return self._value

    @property
    def version(self) -> int:
        """How many values were published so far."""
        return self._version

    @property
    def closed(self) -> bool:
        """The producer called :meth:`close` and has not published since."""
        return self._closed

    def publish(self, value: T) -> None:
        """Make ``value`` the newest and wake every waiting consumer."""
        self._value = value
        self._version += 1
        self._closed = False
        self._wake()

    def store(self, value: T) -> None:
        """Make ``value`` the newest without waking anyone (callable from any thread).

        Waiting consumers see it at the next :meth:`publish`.
        """
        self._value = value
        self._version += 1

    def close(self) -> None:
        """Wake the waiting consumers and tell them nothing more will come."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def wait_newer(self, version: int) -> tuple[int, T]:
        """Wait until a value newer than ``version`` exists; return it with its version.

        Raises :class:`BroadcastClosed` when the producer closes before that.
        """
        while self._version <= version or self._value is None:
            if self._closed:
                raise BroadcastClosed
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()
        return self._version, self._value

    def subscribe(self) -> Subscription[T]:
        """A newest-only view of the values published from now on."""
        return Subscription(self)


class Subscription(Generic[T]):
    """Each new value once; a slow consumer skips straight to the newest one.

    Use it as ``with`` / ``async with`` block and iterate it with ``async for``; iteration
    ends when the producer closes.  It holds no buffer: skipped values are simply never seen.
    """

    def __init__(self, source: Broadcast[T]) -> None:
        self._source = source
        self._seen = source.version
        self._open = True
        self._skipped = 0

    @property
    def skipped(self) -> int:
        """Values published but never returned to this consumer (it was too slow)."""
        return self._skipped

    async def next(self) -> T:
        """The next value newer than the last one returned (waits for it)."""
        if not self._open:
            raise BroadcastClosed
        version, value = await self._source.wait_newer(self._seen)
        self._skipped += max(0, version - self._seen - 1)
        self._seen = version
        return value

    def close(self) -> None:
        """Stop iterating (nothing to release: the subscription holds no buffer)."""
        self._open = False

    def __enter__(self) -> Subscription[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Subscription[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.next()
        except BroadcastClosed:
            raise StopAsyncIteration from None
