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

#: Sessions billed by the second of their own model (a translation or Live model).
DURATION_SURFACES = ("translation", "live")


def billed_seconds(session: Any) -> float:
    """
    A duration-billed session's seconds: a Live session's as its provider reports them (the
    last cumulative total); a translation session's are the input audio the gateway relayed,
    since the translation protocol reports no usage (the model consumes all of it).
    """
    if session.info.intent == "live":
        return session.tally.usage.live_seconds
    return session.tally.audio_seconds_in


@attrs.define
class Exchange:
    """
    The record of one request as it goes (finished exactly once): who called and for what,
    as admission learns it.  How it ended comes to `Accountant.finish` as an `Outcome`.
    """

    route: str
    started: float
    #: Unique; the usage ledger's key, and the ``x-request-id`` the caller sees.
    request_id: str = attrs.field(factory=lambda: "req_" + secrets.token_hex(12))
    key_id: str | None = None
    #: The key's limits, when the limiter admitted the call and must hear what it used.
    limits: Limits | None = None
    admitted_tokens: int = 0
    model: str = ""
    stream: bool = False
    finished: bool = False


@attrs.define
class Tally:
    """
    What one call has come to so far, kept by the runner (and the relay) while it runs: the
    mutable half, frozen into an `Outcome` once the call is over.
    """

    status: int = 0
    error: str | None = None
    usage: Usage | None = None
    first_byte: float | None = None
    target: Any = None
    #: Attempts that failed before the last one (fallbacks and retries).
    attempts: int = 0
    #: The model and whether it streamed, as the call learned them where the request did not
    #: say (a passthrough's request and answer).
    model: str = ""
    stream: bool = False

    def attempting(self, target: Any) -> None:
        """A new attempt, at ``target``: what the last one saw is forgotten."""
        self.target, self.first_byte, self.usage = target, None, None

    def outcome(self) -> Outcome:
        target = self.target
        if target is None:
            return Outcome(self.status, self.error, self.usage, self.first_byte,
                           attempts=self.attempts, model=self.model, stream=self.stream)
        return Outcome(self.status, self.error, self.usage, self.first_byte,
                       target.provider.name, target.provider.kind, target.model,
                       self.attempts, self.model, self.stream)


@attrs.frozen
class Outcome:
    """How a call ended, as accounting reads it once: the call pipeline's result."""

    status: int
    error: str | None = None
    usage: Usage | None = None
    first_byte: float | None = None
    provider: str = ""
    provider_kind: str = ""
    upstream_model: str = ""
    attempts: int = 0
    #: The model and streaming the call learned, for an exchange whose request did not say.
    model: str = ""
    stream: bool = False


#: How many distinct model names become metrics labels, and how long one may be.
MODEL_LABELS = 1000
MODEL_LABEL_LENGTH = 200
#: The label of every other model.
OTHER_MODEL = "other"


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
        self._model_labels: set[str] = set()

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

    def finish(self, exchange: Exchange, outcome: Outcome) -> None:
        """Account for ``exchange`` once, as its ``outcome`` says."""
        if exchange.finished:
            return
        exchange.finished = True
        self._in_flight -= 1
        if not self._in_flight:
            waiters, self._drain_waiters = self._drain_waiters, []
            for waiter in waiters:
                waiter.callback(None)
        exchange.model = exchange.model or outcome.model
        exchange.stream = exchange.stream or outcome.stream
        duration = self._clock.seconds() - exchange.started
        ttft = None if outcome.first_byte is None else outcome.first_byte - exchange.started
        usage = outcome.usage or Usage()
        model = self._model_label(exchange.model) if outcome.provider else ""
        self._metrics.request(exchange.route, model, outcome.provider, str(outcome.status),
                              duration, ttft)
        if outcome.usage is not None:
            for kind, count in (("input", usage.input_tokens), ("output", usage.output_tokens)):
                self._metrics.tokens(exchange.route, outcome.provider_kind, model, kind, count)
            # Parts of the input, observed only when reported: most calls touch no cache.
            for kind, count in (("cached_input", usage.cached_input_tokens),
                                ("cache_creation_input", usage.cache_creation_tokens)):
                if count:
                    self._metrics.tokens(exchange.route, outcome.provider_kind, model, kind,
                                         count)
        cost = self._cost(exchange, outcome, model, usage)
        if exchange.limits is not None and exchange.key_id is not None:
            self._limiter.commit(
                exchange.key_id, exchange.limits, exchange.admitted_tokens,
                usage.input_tokens + usage.output_tokens, cost,
            ).addErrback(lambda failure: log.failure("limiter commit failed", failure))
        if outcome.status != 401:  # a caller with no valid key is no one to account for
            self._ledger.append(UsageRecord(
                request_id=exchange.request_id, time=exchange.started, kind="request",
                route=exchange.route, key_id=exchange.key_id, model=exchange.model,
                provider=outcome.provider, upstream_model=outcome.upstream_model,
                status=outcome.status, input_tokens=usage.input_tokens,
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
            "provider": outcome.provider,
            "upstream_model": outcome.upstream_model,
            "stream": exchange.stream,
            "status": outcome.status,
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
            "attempts": outcome.attempts + 1,
            "duration_ms": round(duration * 1000, 3),
            "ttft_ms": None if ttft is None else round(ttft * 1000, 3),
            "error": outcome.error,
        })
        if self.tracing is not None:
            self.tracing.exchange_finished(exchange, outcome)

    def _model_label(self, model: str) -> str:
        """
        The model as a metrics label: only routed names, and of those (a pattern route such
        as ``*`` takes any name a caller makes up) the first `MODEL_LABELS`, each at most
        `MODEL_LABEL_LENGTH` long; the rest are ``other``, so callers cannot grow the series
        without bound.
        """
        labels = self._model_labels
        if model in labels:
            return model
        if len(labels) >= MODEL_LABELS or len(model) > MODEL_LABEL_LENGTH:
            return OTHER_MODEL
        labels.add(model)
        return model

    def _cost(self, exchange: Exchange, outcome: Outcome, model: str, usage: Usage) -> float:
        """What the call cost at the price table's rates (0 for unpriced models)."""
        if outcome.usage is None:
            return 0.0
        cost = self.prices.cost(outcome.upstream_model or exchange.model, usage)
        if not cost:
            return 0.0
        self._metrics.cost(exchange.route, outcome.provider, model, cost)
        return cost

    def session_costs(self, session: Any) -> tuple[float, str | None, float]:
        """
        What a realtime session has cost so far at the price table's rates: its conversation's
        cost, and the model its input transcription is priced as with that cost.  Translation
        and Live sessions are billed by the second of their model alone (`billed_seconds`).
        """
        info, usage = session.info, session.tally.usage
        model = info.upstream_model or info.model
        if info.intent in DURATION_SURFACES:
            price = self.prices.price(model)
            if price is None:
                return 0.0, model, 0.0
            paused = usage.live_paused_seconds
            return 0.0, model, ((billed_seconds(session) - paused) * price.per_second
                                + paused * (price.paused_per_second or price.per_second))
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
                transcriber, usage.transcription_input_tokens,
                self._transcribed_seconds(session, transcriber),
                usage.transcription_output_tokens) or 0.0
        return conversation, transcriber, transcription

    def _transcribed_seconds(self, session: Any, transcriber: str) -> float:
        """
        The seconds a duration-priced transcription is billed: in a transcription session all
        the audio sent is transcribed, so audio after the last reported transcript is billed
        too (the provider's report of it may never come before the close).
        """
        reported = session.tally.usage.transcription_seconds
        price = self.prices.price(transcriber)
        if session.info.intent != "transcription" or price is None or not price.per_second:
            return reported
        return max(reported, session.tally.audio_seconds_in)

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
        if info.intent in DURATION_SURFACES:
            if cost:
                self._metrics.cost("realtime", info.provider_kind, info.model, cost)
            self._ledger.append(record(
                request_id=info.id, route="realtime_" + info.intent, model=info.model,
                upstream_model=info.upstream_model, audio_seconds=billed_seconds(session),
                cost_usd=cost))
            return
        seconds = (usage.transcription_seconds if transcriber is None
                   else self._transcribed_seconds(session, transcriber))
        if seconds > usage.transcription_seconds:
            record = functools.partial(record, estimated=True)
        transcribed = functools.partial(
            record, input_tokens=usage.transcription_input_tokens,
            output_tokens=usage.transcription_output_tokens,
            input_audio_tokens=usage.transcription_input_tokens,
            output_text_tokens=usage.transcription_output_tokens,
            audio_seconds=seconds, cost_usd=transcription)
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
