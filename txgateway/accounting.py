"""What each request cost: counted once at its end into metrics and the access log."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger

from txgateway.logs import write_access
from txgateway.metrics import GatewayMetrics
from txgateway.usage import Usage


@attrs.define
class Exchange:
    """The record of one request as it goes (mutable; finished exactly once)."""

    route: str
    started: float
    model: str = ""
    provider: str = ""
    provider_kind: str = ""
    upstream_model: str = ""
    stream: bool = False
    status: int = 0
    first_byte: float | None = None
    usage: Usage | None = None
    error: str | None = None
    finished: bool = False


class Accountant:
    """Turns finished exchanges into metrics and one access log line each."""

    def __init__(self, clock: Any, metrics: GatewayMetrics, access_log: Logger) -> None:
        self._clock = clock
        self._metrics = metrics
        self._log = access_log
        self._in_flight = 0
        self._drain_waiters: list[Deferred[None]] = []

    def start(self, route: str) -> Exchange:
        self._in_flight += 1
        return Exchange(route=route, started=self._clock.seconds())

    async def drained(self, reactor: Any, timeout: float) -> None:
        """Wait until no exchange is in flight, or ``timeout`` seconds."""
        if self._in_flight:
            waiter: Deferred[None] = Deferred()
            self._drain_waiters.append(waiter)
            try:
                await waiter.addTimeout(timeout, reactor)
            except DeferredTimeout:
                pass

    def finish(self, exchange: Exchange) -> None:
        if exchange.finished:
            return
        exchange.finished = True
        self._in_flight -= 1
        if not self._in_flight:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        duration = self._clock.seconds() - exchange.started
        ttft = None if exchange.first_byte is None else exchange.first_byte - exchange.started
        usage = exchange.usage or Usage()
        # Only routed model names become label values: callers cannot grow the label set.
        model = exchange.model if exchange.provider else ""
        self._metrics.request(exchange.route, model, exchange.provider, str(exchange.status),
                              duration, ttft)
        if exchange.usage is not None:
            for kind, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
                self._metrics.tokens(exchange.route, exchange.provider_kind, model, kind, count)
            # Parts of the input, observed only when reported: most calls touch no cache.
            for kind, count in (("cached_input", usage.cached_input_tokens),
                                ("cache_creation_input", usage.cache_creation_tokens)):
                if count:
                    self._metrics.tokens(exchange.route, exchange.provider_kind, model, kind,
                                         count)
        write_access(
            self._log,
            route=exchange.route,
            model=exchange.model,
            provider=exchange.provider,
            upstream_model=exchange.upstream_model,
            stream=exchange.stream,
            status=exchange.status,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cached_input_tokens=usage.cached_input_tokens,
            cache_creation_input_tokens=usage.cache_creation_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            usage_estimated=usage.estimated,
            duration_ms=round(duration * 1000, 3),
            ttft_ms=None if ttft is None else round(ttft * 1000, 3),
            error=exchange.error,
        )
