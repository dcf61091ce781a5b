"""
The batching writer in front of `IStore.write_usage`.

Requests append their `UsageRecord` and go on; a LoopingCall writes what has gathered every
``flush_interval`` seconds, one transaction per batch, so a crash loses at most the last moment
of records and the database sees a few large inserts instead of one per request.  Nothing is
dropped: when the database is down the records stay and the writes are retried with backoff,
and when ``max_pending`` records wait, `room` makes new requests wait for a flush.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from txgateway.store import IStore, UsageRecord

log = Logger()


class Ledger:
    """Buffers usage records and writes them to ``store`` in batches."""

    def __init__(
        self,
        store: IStore,
        reactor: Any,
        flush_interval: float = 0.25,
        max_pending: int = 10_000,
        max_batch: int = 1000,
        max_backoff: float = 5.0,
    ) -> None:
        self._store = store
        self._clock = reactor
        self._flush_interval = flush_interval
        self._max_pending = max_pending
        self._max_batch = max_batch
        self._max_backoff = max_backoff
        self._buffer: list[UsageRecord] = []
        self._in_flight: list[UsageRecord] = []
        self._waiters: list[Deferred[None]] = []
        self._failures = 0
        self._retry_at = 0.0
        self._loop = LoopingCall(self._tick)
        self._loop.clock = reactor
        self._stopped = self._loop.start(flush_interval, now=False)

    @property
    def pending(self) -> int:
        """Records not yet written, including the batch being written."""
        return len(self._buffer) + len(self._in_flight)

    def append(self, record: UsageRecord) -> None:
        """Keep ``record`` for the next flush."""
        self._buffer.append(record)

    def room(self) -> Deferred[None]:
        """Fires once fewer than ``max_pending`` records wait: at once, or after a flush."""
        if self.pending < self._max_pending:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _tick(self) -> Deferred[None] | None:
        if not self._buffer or self._clock.seconds() < self._retry_at:
            return None
        return self._drain()

    def _drain(self) -> Deferred[None]:
        """Write batches until the buffer is empty or a write fails; never fails itself."""
        batch = self._buffer[:self._max_batch]
        del self._buffer[:len(batch)]
        self._in_flight = batch
        return maybeDeferred(self._store.write_usage, batch).addCallbacks(
            self._written, self._failed, errbackArgs=(batch,))

    def _written(self, _: object) -> Deferred[None] | None:
        self._in_flight = []
        if self._failures:
            log.info("Usage ledger writes succeed again after {failures} failed attempts",
                     failures=self._failures)
            self._failures = 0
            self._retry_at = 0.0
        self._release()
        return self._drain() if self._buffer else None

    def _failed(self, failure: Failure, batch: list[UsageRecord]) -> None:
        self._buffer[:0] = batch
        self._in_flight = []
        if not self._failures:
            log.failure("Usage ledger write failed; keeping {pending} records and retrying",
                        failure, pending=self.pending)
        self._failures += 1
        delay = min(self._flush_interval * 2 ** self._failures, self._max_backoff)
        self._retry_at = self._clock.seconds() + delay

    def _release(self) -> None:
        if self.pending < self._max_pending:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                waiter.callback(None)

    @inlineCallbacks
    def close(self, timeout: float = 30.0) -> Any:
        """
        Stop the loop and write everything, retrying failed writes for up to ``timeout``
        seconds; then log how many records could not be written.
        """
        if self._loop.running:
            self._loop.stop()
            yield self._stopped  # after any write in progress
        deadline = self._clock.seconds() + timeout
        while self._buffer:
            yield self._drain()
            now = self._clock.seconds()
            if not self._buffer or now >= deadline:
                break
            yield deferLater(self._clock, max(0.0, min(self._retry_at, deadline) - now))
        if self._buffer:
            log.error("Usage ledger closed with {count} records unwritten",
                      count=len(self._buffer))
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
