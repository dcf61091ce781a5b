"""
How long a slow peer may hold the relay.  Backpressure pauses one side while the other's
socket is full; a peer that stops reading altogether would keep it paused, and its own pings
and closing handshake unread, for as long as the session lives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


@implementer(IPushProducer)
class StallGuard:
    """
    Stands in for the producer a consumer's transport pauses, and calls ``stalled`` once that
    transport has kept it paused for ``timeout`` seconds on end.

    Transports pause and resume their producer often under load, so a pause costs a timestamp,
    and there is at most one timer per ``timeout`` whatever the number of pauses.
    """

    def __init__(self, producer: IPushProducer, clock: Any, timeout: float,
                 stalled: Callable[[], None]) -> None:
        self._producer = producer
        self._clock = clock
        self._timeout = timeout
        self._stalled = stalled
        self._paused_at: float | None = None
        self._check: Any = None

    def pauseProducing(self) -> None:
        self._producer.pauseProducing()
        self._paused_at = self._clock.seconds()
        if self._check is None:
            self._check = self._clock.callLater(self._timeout, self._look)

    def resumeProducing(self) -> None:
        self._paused_at = None
        self._producer.resumeProducing()

    def stopProducing(self) -> None:
        self.cancel()
        self._producer.stopProducing()

    def cancel(self) -> None:
        """Stop watching (the session is over)."""
        if self._check is not None:
            self._check.cancel()
            self._check = None

    def _look(self) -> None:
        self._check = None
        if self._paused_at is None:
            return
        left = self._paused_at + self._timeout - self._clock.seconds()
        if left > 0:
            self._check = self._clock.callLater(left, self._look)
            return
        # The consumer is given up on: what it held back may flow (and be dropped) again.
        self.resumeProducing()
        self._stalled()
