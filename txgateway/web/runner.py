"""
The one call pipeline of the REST families: admit -> plan -> attempt -> answer -> account.

An endpoint (`CallEndpoint`) says only how its dialect parses a request and writes an error,
and which `ICodec` carries a call to a target: the caller's request in the upstream's shape,
the upstream's answers and events back in the caller's.  The runner does the rest once for
all of them: targets in the plan's order, each with its retries (jittered backoff, the
upstream's ``Retry-After`` honoured), ``prepare`` first, the answer or the relay, errors in
the caller's dialect, and the final `Outcome` handed to accounting.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET
from zope.interface import Attribute, Interface

from txgateway.accounting import Exchange, Outcome, Tally
from txgateway.admission import Admitted, Caller, Refusal, admit, said
from txgateway.auth import caller_key
from txgateway.config import RoutingSettings
from txgateway.dialects.errors import OPENAI, ErrorDialect, upstream_error
from txgateway.dialects.openai import BadRequest, stream_error_event
from txgateway.dialects.openai import error_body as openai_error_body
from txgateway.providers import ITranslatingProvider, UpstreamRequest, prepare
from txgateway.routing import Target
from txgateway.upstream import (
    RETRYABLE_ERRORS,
    RETRYABLE_STATUSES,
    UpstreamCall,
    UpstreamError,
    UpstreamRefusedAttempt,
)
from txgateway.usage import estimate_tokens
from txgateway.web.relay import (
    CLIENT_CLOSED,
    Bytes,
    ErrorEvent,
    ITranscoder,
    Relay,
    start_event_stream,
    start_relayed,
)
from txgateway.web.resource import JSONResource, write_json

log = Logger()


class ICodec(Interface):
    """
    One call's translation between the caller's dialect and a target's: the identity codec
    when they match (the caller's bytes go up, the upstream's come back, usage read on the
    side), a translating one otherwise.
    """

    stream_type = Attribute("The content type (a prefix) of the upstream's streams.")

    def request(parsed: Any, target: Target) -> UpstreamRequest | None:  # noqa: N805 (zope)
        """
        The upstream request of the caller's ``parsed`` request, to ``target``; None when the
        codec answers itself (a local estimate), with `answer` given no body.
        """

    def answer(body: bytes) -> tuple[bytes, Any]:  # noqa: N805
        """A 200's whole body in the caller's dialect, and its `Usage` (or None)."""

    def error(status: int, body: bytes) -> bytes:  # noqa: N805
        """A failed answer's body, as near the caller's dialect as the codec can make it."""

    def transcoder(parsed: Any) -> ITranscoder:  # noqa: N805
        """The relay's transcoder of a stream, for this request."""


class IKeepingCodec(ICodec):
    """
    The codec of one call whose success leaves something behind (the Responses API's stored
    response, its conversation's turn): kept once the answer is made and before the caller
    has its end, so that a follow-up sent at once finds it.  Its stream may number its
    events, so a stream broken under it ends with the codec's own error event.
    """

    def error_event(status: int, message: str, code: str) -> bytes:  # noqa: N805
        """The event that ends this call's stream when it broke (an `ErrorEvent`)."""

    def kept() -> Deferred[Any] | None:  # noqa: N805
        """Keep what the answer (or the stream, ended well) made; None when it made nothing."""


class IPassingCodec(ICodec):
    """
    A codec whose 200s that are not JSON go back as the upstream wrote them (speech audio, a
    transcript as text or subtitles): relayed as they arrive, its content headers kept, a
    break dropping the client's connection; its JSON answers and streams are as any codec's.
    """


def retry_wait(settings: RoutingSettings, retry: int, error: Exception,
               jitter: Callable[[], float] = random.random) -> float | None:
    """
    How long to wait before retry number ``retry`` + 1 on a target that failed with
    ``error``, or None to move on: the doubled backoff, jittered; at least the upstream's
    ``Retry-After`` when it gave one no longer than ``max_retry_after``; a 429 that says
    nothing of when to come back is not retried.
    """
    backoff = settings.retry_backoff * 2 ** retry * (0.5 + jitter())
    if not isinstance(error, UpstreamRefusedAttempt):
        return backoff
    if error.retry_after is None:
        return None if error.status == 429 else backoff
    if error.retry_after > settings.max_retry_after:
        return None
    return max(backoff, error.retry_after)


class CallEndpoint(JSONResource):
    """
    A proxying endpoint, whatever the caller's dialect: one exchange per request, its body
    parsed (`parse`), admitted (`admit`, which endpoints may extend) and `run` on the
    pipeline with the `codec` of each target.  `error_body` and `error_event` are OpenAI's
    unless an endpoint says otherwise (as `errors` is).
    """

    isLeaf = True
    #: The route name in metrics and the access log.
    route = ""
    #: How the caller's dialect writes the upstream's errors.
    errors: ErrorDialect = OPENAI
    #: The headers that carry the exchange's id (its SDK reads one of them).
    request_id_headers: tuple[bytes, ...] = (b"x-request-id",)
    error_body = staticmethod(openai_error_body)
    #: The caller's dialect's error event, ending a stream that broke.
    error_event: ErrorEvent = staticmethod(stream_error_event)

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self._gateway = gateway

    def parse(self, raw: bytes) -> Any:
        """The caller's request, with ``model`` and ``stream``; raises `BadRequest`."""
        raise NotImplementedError

    def codec(self, request: Any, parsed: Any, target: Target) -> ICodec:
        """The codec of a call to ``target``; raises a `Refusal` when it cannot serve it."""
        raise NotImplementedError

    def prompt_size(self, parsed: Any, size: int) -> int:
        """The bytes of the prompt, which estimates count: the whole body of ``size`` bytes."""
        return size

    def admission_tokens(self, parsed: Any, size: int) -> int:
        """What a tokens-per-minute limit counts before the call: the prompt, estimated."""
        return estimate_tokens(self.prompt_size(parsed, size))

    def render_POST(self, request: Any) -> Any:
        gateway = self._gateway
        exchange = gateway.accountant.start(self.route)
        for name in self.request_id_headers:
            request.setHeader(name, exchange.request_id.encode())
        raw = request.content.getvalue()
        try:
            parsed = self.parse(raw)
        except BadRequest as error:
            gateway.accountant.finish(exchange, Outcome(400, str(error)))
            return write_json(request, 400, self.error_body(400, str(error), None, error.param))
        asked(exchange, parsed)
        call = UpstreamCall(gateway.reactor, gateway.config.upstream)
        request.notifyFinish().addErrback(lambda _: call.abort())
        Deferred.fromCoroutine(run(self, request, exchange, parsed, len(raw), call))
        return NOT_DONE_YET

    async def admit(self, request: Any, exchange: Exchange, parsed: Any,
                    size: int) -> list[Target]:
        """
        Who calls, whether they may, and the targets to try, in order; or a `Refusal`.
        Endpoints may extend it (the Responses API pins follow-ups to a provider).
        """
        admitted = await admit_request(self._gateway, request, exchange, parsed.model,
                                       self.admission_tokens(parsed, size), self.errors)
        return list(admitted.plan)


async def run(endpoint: CallEndpoint, request: Any, exchange: Exchange, parsed: Any,
              size: int, call: UpstreamCall) -> Outcome:
    """Admit, plan and attempt the call, answer the caller whatever happens (`settle`)."""
    gateway = endpoint._gateway
    tally = Tally()

    async def work() -> None:
        plan = await endpoint.admit(request, exchange, parsed, size)
        await attempt(gateway, request, tally, plan, call, lambda target: _call(
            endpoint, request, tally, parsed, size, target, call,
            endpoint.codec(request, parsed, target)))

    return await settle(gateway, request, exchange, call, tally, work(), endpoint.error_body)


def serve(gateway: Any, request: Any, route: str,
          work: Callable[[Exchange, Tally, UpstreamCall], Awaitable[None]],
          error_body: Callable[..., bytes]) -> Any:
    """
    For ``render_*``: ``work`` done as one exchange of ``route`` with its `Tally` and its
    abortable upstream call, answered and accounted for by `settle`.
    """
    exchange = gateway.accountant.start(route)
    request.setHeader(b"x-request-id", exchange.request_id.encode())
    call = UpstreamCall(gateway.reactor, gateway.config.upstream)
    request.notifyFinish().addErrback(lambda _: call.abort())
    tally = Tally()
    Deferred.fromCoroutine(settle(gateway, request, exchange, call, tally,
                                  work(exchange, tally, call), error_body))
    return NOT_DONE_YET


async def settle(gateway: Any, request: Any, exchange: Exchange, call: UpstreamCall,
                 tally: Tally, work: Awaitable[None],
                 error_body: Callable[..., bytes]) -> Outcome:
    """
    Await ``work``, which answers the request and keeps ``tally``, then account for it
    once.  What it raises is answered in ``error_body``'s dialect (a refusal or bad input
    with its status, an upstream fault with its own, a bug with 500, logged); a client that
    left gets nothing, and an answer already begun is ended as it stands.
    """

    def fail(status: int, message: str, code: str | None, param: str | None = None) -> None:
        tally.status, tally.error = status, message
        if call.aborted or request.finished:
            return
        if request.startedWriting:
            request.finish()
        else:
            finish(request, call, status, error_body(status, message, code, param))

    try:
        await work
    except Refusal as refusal:
        fail(refusal.status, str(refusal), refusal.code, refusal.param)
    except BadRequest as error:
        fail(400, str(error), None, error.param)
    except CancelledError:
        tally.status, tally.error = CLIENT_CLOSED, "the client disconnected"
    except UpstreamRefusedAttempt as error:
        # Refused where no other attempt is worth making: said as the upstream said it.
        if error.retry_after is not None:
            request.setHeader(b"retry-after", b"%d" % max(round(error.retry_after), 1))
        fail(error.status, str(error), error.code)
    except UpstreamError as error:
        fail(error.status, str(error), error.code)
    except Exception:
        log.failure("{route} for {model} failed", route=exchange.route, model=exchange.model)
        fail(500, "the gateway failed to answer", "internal_error")
    outcome = tally.outcome()
    gateway.accountant.finish(exchange, outcome)
    return outcome


async def attempt(gateway: Any, request: Any, tally: Tally, plan: list[Target],
                  call: UpstreamCall, step: Callable[[Target], Awaitable[None]],
                  retries: int | None = None) -> None:
    """
    Call the plan's targets in turn (``step``), each with its retries (``retries``, when not
    the configured number: none for a body that cannot be sent twice), until one answers: a
    failure before anything reached the client (no connection, a timeout, 429 or 5xx) moves
    on.  Nothing is written to the client before an upstream's answer is taken.
    """
    router, settings = gateway.router, gateway.config.routing
    if retries is None:
        retries = settings.retries
    for position, target in enumerate(plan):
        last = position + 1 == len(plan)
        retry = 0
        while True:
            tally.attempting(target)
            request.setHeader(b"x-txgateway-provider", target.provider.name.encode())
            call.may_fall_back = not last or retry < retries
            try:
                preparing = prepare(target.provider)  # a token or credentials, first
                if preparing is not None:
                    await preparing
                await step(target)
            except RETRYABLE_ERRORS as error:
                router.failed(target)
                if not call.may_fall_back or request.startedWriting:
                    raise
                wait = retry_wait(settings, retry, error) if retry < retries else None
                if wait is None and last:
                    raise  # nowhere else to go: the caller hears it
                tally.attempts += 1
                gateway.metrics.fallback(target.provider.name, error.code)
                if wait is None:
                    break
                retry += 1
                await deferLater(gateway.reactor, wait)
                if call.aborted:
                    raise CancelledError() from None
                continue
            if tally.status in RETRYABLE_STATUSES:
                router.failed(target)
            else:
                router.succeeded(target)
            return


async def _call(endpoint: CallEndpoint, request: Any, tally: Tally, parsed: Any, size: int,
                target: Target, call: UpstreamCall, codec: ICodec) -> None:
    """One attempt: the request sent, then its stream relayed or its whole answer given."""
    gateway = endpoint._gateway
    upstream = codec.request(parsed, target)
    if upstream is None:
        body, tally.usage = codec.answer(b"")
        tally.status = 200
        finish(request, call, 200, body)
        return
    response = await call.send(target.provider.agent, upstream)
    content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
    keeping = cast(IKeepingCodec, codec) if IKeepingCodec.providedBy(codec) else None
    streamed = parsed.stream and content_type.startswith(codec.stream_type)
    passed = not streamed and b"json" not in content_type and IPassingCodec.providedBy(codec)
    if response.code == 200 and (streamed or passed):
        tally.status = 200
        prompt = endpoint.prompt_size(parsed, size)
        if streamed:
            start_event_stream(request)
            relay = Relay(gateway, request, tally, call,
                          endpoint.error_event if keeping is None else keeping.error_event,
                          codec.transcoder(parsed), prompt,
                          None if keeping is None else keeping.kept)
        else:  # as the upstream wrote it: a break drops the client's connection
            start_relayed(request, response)
            relay = Relay(gateway, request, tally, call, None, Bytes(), prompt)
        call.deliver(response, relay)
        await relay.done
        return
    tally.first_byte = gateway.reactor.seconds()
    body = await call.read(response)
    if response.code == 200:
        try:
            body, tally.usage = codec.answer(body)
        except (ValueError, TypeError, AttributeError, KeyError):
            raise UpstreamError("the upstream's answer could not be read") from None
        keeping_done = None if keeping is None else keeping.kept()
        if keeping_done is not None:
            await keeping_done
        tally.status = 200
        finish(request, call, 200, body)
        return
    status, body = upstream_error(endpoint.errors, response.code,
                                  codec.error(response.code, body), gateway.redactor)
    tally.status, tally.error = status, f"upstream status {response.code}"
    pass_retry_after(request, response)
    finish(request, call, status, body)


def stream_type(provider: Any) -> bytes:
    """The content type a provider streams in: SSE unless it translates and says otherwise."""
    if ITranslatingProvider.providedBy(provider):
        expected: bytes = provider.stream_content_type
        return expected
    return b"text/event-stream"


def refused_api(api: str, model: str, target: Target) -> Refusal:
    """The 400 of a provider that does not offer ``api`` (or not in the caller's dialect)."""
    return Refusal(400, f"the model `{model}` is served by the provider "
                        f"`{target.provider.name}`, which does not offer the {api} API",
                   "unsupported_api", "model")


async def admit_request(gateway: Any, request: Any, exchange: Exchange, model: str,
                        tokens: int, dialect: ErrorDialect = OPENAI,
                        routed: bool = True) -> Admitted:
    """`txgateway.admission.admit` for an HTTP request: its key, and what it learns recorded."""
    key = caller_key(request)
    principal = await gateway.authenticator.authenticate(key)
    try:
        admitted = await admit(gateway, principal, key is not None, model, tokens, dialect,
                               routed)
    except Refusal as refusal:
        record_caller(request, exchange, refusal.caller)
        exchange.model = said(gateway, model)
        raise
    record_caller(request, exchange, admitted.caller)
    return admitted


def asked(exchange: Exchange, parsed: Any) -> None:
    """What the caller asked for (its ``model``, whether it streams), kept for accounting."""
    exchange.model, exchange.stream = parsed.model, parsed.stream


def record_caller(request: Any, exchange: Exchange, caller: Caller) -> None:
    """What admission learned of the caller, kept for accounting; its limiter's headers set."""
    exchange.key_id = caller.key_id
    exchange.limits, exchange.admitted_tokens = caller.limits, caller.tokens
    for name, value in caller.headers.items():
        request.setHeader(name, value)


def finish(request: Any, call: UpstreamCall, status: int, body: bytes) -> None:
    """Answer with a JSON body, unless the client has already gone."""
    if call.aborted:
        return
    request.write(write_json(request, status, body))
    request.finish()


def pass_retry_after(request: Any, response: Any) -> None:
    """The caller's SDK honours Retry-After when it backs off: keep the upstream's."""
    retry_after = response.headers.getRawHeaders(b"retry-after")
    if retry_after:
        request.setHeader(b"retry-after", retry_after[0])
