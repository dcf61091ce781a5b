"""What each request cost: counted once at its end into metrics and the access log."""

from __future__ import annotations

import functools
import secrets
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger

from txgateway.limits import ILimiter, Limits
from txgateway.logs import AccessWriter
from txgateway.metrics import GatewayMetrics
from txgateway.pricing import PriceTable
from txgateway.store import UsageRecord
from txgateway.store.ledger import Ledger
from txgateway.usage import Usage

log = Logger()


@attrs.define
class Exchange:
    """The record of one request as it goes (mutable; finished exactly once)."""

    route: str
    started: float
    #: Unique; the usage ledger's key, and the ``x-request-id`` the caller sees.
    request_id: str = attrs.field(factory=lambda: "req_" + secrets.token_hex(12))
    key_id: str | None = None
    #: The key's limits, when the limiter admitted the call and must hear what it used.
    limits: Limits | None = None
    admitted_tokens: int = 0
    #: Attempts that failed before this one answered (fallbacks and retries).
    attempts: int = 0
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

    #: A `txgateway.tracing.Tracing` told of each end, when traces are exported.
    tracing: Any = None

    def __init__(self, clock: Any, metrics: GatewayMetrics, access_log: AccessWriter,
                 ledger: Ledger, limiter: ILimiter, prices: PriceTable) -> None:
        self._clock = clock
        self._metrics = metrics
        self._write_access = access_log
        self._ledger = ledger
        self._limiter = limiter
        self.prices = prices
        self._in_flight = 0
        self._drain_waiters: list[Deferred[None]] = []

    @property
    def in_flight(self) -> int:
        """Exchanges started and not yet finished."""
        return self._in_flight

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
        cost = self._cost(exchange, model, usage)
        if exchange.limits is not None and exchange.key_id is not None:
            self._limiter.commit(
                exchange.key_id, exchange.limits, exchange.admitted_tokens,
                usage.input_tokens + usage.output_tokens, cost,
            ).addErrback(lambda failure: log.failure("limiter commit failed", failure))
        if exchange.status != 401:  # a caller with no valid key is no one to account for
            self._ledger.append(UsageRecord(
                request_id=exchange.request_id, time=exchange.started, kind="request",
                route=exchange.route, key_id=exchange.key_id, model=exchange.model,
                provider=exchange.provider, upstream_model=exchange.upstream_model,
                status=exchange.status, input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cached_input_tokens=usage.cached_input_tokens,
                cache_creation_tokens=usage.cache_creation_tokens,
                reasoning_tokens=usage.reasoning_tokens,
                input_audio_tokens=usage.input_audio_tokens,
                input_text_tokens=usage.input_tokens - usage.input_audio_tokens,
                output_audio_tokens=usage.output_audio_tokens,
                output_text_tokens=usage.output_tokens - usage.output_audio_tokens,
                images=usage.images, audio_seconds=usage.audio_seconds,
                search_units=usage.search_units, estimated=usage.estimated, cost_usd=cost,
                duration_ms=duration * 1000,
                ttft_ms=None if ttft is None else ttft * 1000,
            ))
        self._write_access({
            "request_id": exchange.request_id,
            "key_id": exchange.key_id,
            "route": exchange.route,
            "model": exchange.model,
            "provider": exchange.provider,
            "upstream_model": exchange.upstream_model,
            "stream": exchange.stream,
            "status": exchange.status,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "cache_creation_input_tokens": usage.cache_creation_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
            "images": usage.images,
            "audio_seconds": usage.audio_seconds,
            "search_units": usage.search_units,
            "usage_estimated": usage.estimated,
            "cost_usd": cost,
            "attempts": exchange.attempts + 1,
            "duration_ms": round(duration * 1000, 3),
            "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
            "error": exchange.error,
        })
        if self.tracing is not None:
            self.tracing.exchange_finished(exchange)

    def _cost(self, exchange: Exchange, model: str, usage: Usage) -> float:
        """What the call cost at the price table's rates (0 for unpriced models)."""
        if exchange.usage is None:
            return 0.0
        cost = self.prices.cost(exchange.upstream_model or exchange.model, usage)
        if not cost:
            return 0.0
        self._metrics.cost(exchange.route, exchange.provider, model, cost)
        return cost

    def session_costs(self, session: Any) -> tuple[float, str | None, float]:
        """
        What a realtime session has cost so far at the price table's rates: its conversation's
        cost, and the model its input transcription is priced as with that cost.
        """
        info, usage = session.info, session.tally.usage
        model = info.upstream_model or info.model
        # Transcription is priced as its own model: the session's, or a transcription
        # session's model itself.
        transcriber = session.tally.transcription_model or (
            model if info.intent == "transcription" else None)
        conversation = (self.prices.realtime_cost(
            model, usage.input_text_tokens, usage.input_audio_tokens, usage.input_image_tokens,
            usage.cached_text_tokens, usage.cached_audio_tokens, usage.output_text_tokens,
            usage.output_audio_tokens) or 0.0)
        transcription = 0.0
        if transcriber is not None:
            transcription = self.prices.transcription_cost(
                transcriber, usage.transcription_input_tokens, usage.transcription_seconds,
                usage.transcription_output_tokens) or 0.0
        return conversation, transcriber, transcription

    def session_cost(self, session: Any) -> float:
        conversation, _, transcription = self.session_costs(session)
        return conversation + transcription

    def session_ended(self, session: Any) -> None:
        """
        A realtime session's end: its tally into the ledger, its tokens and cost told to the
        limiter (`txgateway.realtime.session.SessionBook` calls this).  A conversation's input
        transcription is a record of its own, under the transcription model (its tokens or
        seconds are priced and reported apart); a transcription session is that record alone.
        """
        info, tally = session.info, session.tally
        if self.tracing is not None:
            self.tracing.session_ended(session)
        usage = tally.usage
        conversation, transcriber, transcription = self.session_costs(session)
        cost = conversation + transcription
        if info.limits is not None:
            self._limiter.commit(info.key_id, info.limits, 0, usage.total_tokens, cost
                                 ).addErrback(lambda f: log.failure("limiter commit failed", f))
        ended = tally.ended or tally.started
        record = functools.partial(
            UsageRecord, time=tally.started, kind="realtime", key_id=info.key_id,
            provider=info.provider, status=101, estimated=bool(tally.unterminated),
            duration_ms=(ended - tally.started) * 1000)
        transcribed = functools.partial(
            record, input_tokens=usage.transcription_input_tokens,
            output_tokens=usage.transcription_output_tokens,
            input_audio_tokens=usage.transcription_input_tokens,
            output_text_tokens=usage.transcription_output_tokens,
            audio_seconds=usage.transcription_seconds, cost_usd=transcription)
        if info.intent == "transcription":
            if cost:
                self._metrics.cost("realtime", info.provider_kind, info.model, cost)
            self._ledger.append(transcribed(
                request_id=info.id, route="realtime", model=info.model,
                upstream_model=info.upstream_model, cost_usd=cost))
            return
        if conversation:
            self._metrics.cost("realtime", info.provider_kind, info.model, conversation)
        self._ledger.append(record(
            request_id=info.id, route="realtime", model=info.model,
            upstream_model=info.upstream_model,
            input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cached_input_tokens=usage.input_cached_tokens,
            input_text_tokens=usage.input_text_tokens,
            input_audio_tokens=usage.input_audio_tokens,
            output_text_tokens=usage.output_text_tokens,
            output_audio_tokens=usage.output_audio_tokens, cost_usd=conversation))
        if transcriber is not None and (usage.transcription_tokens
                                        or usage.transcription_seconds):
            if transcription:
                self._metrics.cost("realtime", info.provider_kind, transcriber, transcription)
            self._ledger.append(transcribed(
                request_id=info.id + "-transcription", route="realtime_transcription",
                model=transcriber, upstream_model=transcriber))
