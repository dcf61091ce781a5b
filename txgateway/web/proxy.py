"""
What every proxying endpoint shares, whatever the caller's dialect: one exchange per request,
routing by model, the upstream call (aborted when the client leaves), and errors and the
final accounting done once.

An endpoint subclasses `ProxyEndpoint` and says how its dialect parses a request
(`parse`), writes an error (`error_body`), and what the call does (`proxy`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from txgateway.accounting import Exchange
from txgateway.admission import Admitted, Caller, Refusal, admit, limited, said
from txgateway.auth import Principal, caller_key
from txgateway.dialects.errors import OPENAI, ErrorDialect, upstream_error
from txgateway.dialects.openai import BadRequest
from txgateway.dialects.openai import error_body as openai_error_body
from txgateway.gateway import Gateway
from txgateway.providers import ITranslatingProvider, prepare
from txgateway.routing import Target
from txgateway.upstream import (
    RETRYABLE_ERRORS,
    RETRYABLE_STATUSES,
    UpstreamCall,
    UpstreamError,
    UpstreamRefusedAttempt,
)
from txgateway.usage import estimate_tokens
from txgateway.web.relay import CLIENT_CLOSED
from txgateway.web.resource import JSONResource, write_json

log = Logger()


class ProxyEndpoint(JSONResource):
    isLeaf = True
    #: The route name in metrics and the access log.
    route = ""
    #: How the caller's dialect writes the upstream's errors.
    errors: ErrorDialect = OPENAI
    #: The headers that carry the exchange's id (its SDK reads one of them).
    request_id_headers: tuple[bytes, ...] = (b"x-request-id",)

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def parse(self, raw: bytes) -> Any:
        """The caller's request, with ``model`` and ``stream``; raises `BadRequest`."""
        raise NotImplementedError

    def error_body(self, status: int, message: str, code: str | None = None,
                   param: str | None = None) -> bytes:
        """An error in the caller's dialect."""
        raise NotImplementedError

    def answer_error(self, request: Any, exchange: Exchange, response: Any,
                     call: UpstreamCall, body: bytes) -> None:
        """An upstream's answer that is no success, said in the caller's dialect."""
        status, body = upstream_error(self.errors, response.code, body,
                                      self._gateway.redactor)
        exchange.status = status
        exchange.error = f"upstream status {response.code}"
        pass_retry_after(request, response)
        finish(request, call, status, body)

    def admission_tokens(self, parsed: Any, size: int) -> int:
        """What a tokens-per-minute limit counts before the call: the prompt, estimated."""
        return estimate_tokens(size)

    async def proxy(self, request: Any, exchange: Exchange, parsed: Any, target: Target,
                    call: UpstreamCall) -> None:
        """
        Send the call to ``target`` and answer the client; errors are turned into answers by
        the caller.  Nothing may be written to the client before ``call.send`` returned: a
        failure before then falls back to the route's next target.
        """
        raise NotImplementedError

    def render_POST(self, request: Any) -> Any:
        gateway = self._gateway
        exchange = gateway.accountant.start(self.route)
        for name in self.request_id_headers:
            request.setHeader(name, exchange.request_id.encode())
        raw = request.content.getvalue()
        try:
            parsed = self.parse(raw)
        except BadRequest as error:
            exchange.status = 400
            exchange.error = str(error)
            gateway.accountant.finish(exchange)
            return write_json(request, 400, self.error_body(400, str(error), None, error.param))
        exchange.model = parsed.model
        exchange.stream = parsed.stream
        call = UpstreamCall(gateway.reactor, gateway.config.upstream)
        request.notifyFinish().addErrback(lambda _: call.abort())
        Deferred.fromCoroutine(self._guarded(request, exchange, parsed, len(raw), call))
        return NOT_DONE_YET

    async def _guarded(self, request: Any, exchange: Exchange, parsed: Any, size: int,
                       call: UpstreamCall) -> None:
        async def work() -> None:
            plan = await self.admit(request, exchange, parsed, size)
            await self._attempt(request, exchange, parsed, plan, call)

        await answered(self._gateway, request, exchange, call, work(), self.error_body)

    async def admit(self, request: Any, exchange: Exchange, parsed: Any,
                    size: int) -> list[Target]:
        """
        Who calls, whether they may, and the targets to try, in order; or a `Refusal`.
        Endpoints may extend it (the Responses API pins follow-ups to a provider).
        """
        admitted = await admit_request(self._gateway, request, exchange, parsed.model,
                                       self.admission_tokens(parsed, size), self.errors)
        return list(admitted.plan)

    async def _attempt(self, request: Any, exchange: Exchange, parsed: Any,
                       plan: list[Target], call: UpstreamCall) -> None:
        """
        Call the plan's targets in turn, each with its retries, until one answers: a failure
        before anything reached the client (no connection, a timeout, 429 or 5xx) moves on.
        """
        gateway = self._gateway
        router, settings = gateway.router, gateway.config.routing
        attempts = [(target, retry) for target in plan for retry in range(settings.retries + 1)]
        skip = None
        for index, (target, retry) in enumerate(attempts):
            if target is skip:
                continue
            if retry:
                await deferLater(gateway.reactor, settings.retry_backoff * 2 ** (retry - 1))
                if call.aborted:
                    raise CancelledError()
            exchange.provider = target.provider.name
            exchange.provider_kind = target.provider.kind
            exchange.upstream_model = target.model
            exchange.first_byte = exchange.usage = None
            request.setHeader(b"x-txgateway-provider", exchange.provider.encode())
            call.may_fall_back = index + 1 < len(attempts)
            try:
                preparing = prepare(target.provider)  # a token or credentials, first
                if preparing is not None:
                    await preparing
                await self.proxy(request, exchange, parsed, target, call)
            except RETRYABLE_ERRORS as error:
                router.failed(target)
                if not call.may_fall_back or request.startedWriting:
                    raise
                exchange.attempts += 1
                gateway.metrics.fallback(target.provider.name, error.code)
                # A rate-limited target will not be ready by the next retry: move on.
                if isinstance(error, UpstreamRefusedAttempt) and error.status == 429:
                    skip = target
                continue
            if exchange.status in RETRYABLE_STATUSES:
                router.failed(target)
            else:
                router.succeeded(target)
            return


async def answered(gateway: Gateway, request: Any, exchange: Exchange, call: UpstreamCall,
                   work: Awaitable[None],
                   error_body: Callable[..., bytes] = openai_error_body) -> None:
    """
    Await ``work``, which answers the request, and finish the exchange.  What it raises is
    answered in ``error_body``'s dialect: a refusal or bad input with its status, an upstream
    fault with its own, a bug with 500 (logged); a client that left gets nothing, and an answer
    already begun is ended as it stands.
    """

    def fail(status: int, message: str, code: str | None, param: str | None = None) -> None:
        exchange.status, exchange.error = status, message
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
        exchange.status = CLIENT_CLOSED
        exchange.error = "the client disconnected"
    except UpstreamError as error:
        fail(error.status, str(error), error.code)
    except Exception:
        log.failure("{route} for {model} via {provider} failed", route=exchange.route,
                    model=exchange.model, provider=exchange.provider)
        fail(500, "the gateway failed to answer", "internal_error")
    finally:
        gateway.accountant.finish(exchange)


async def admit_request(gateway: Gateway, request: Any, exchange: Exchange, model: str,
                        tokens: int, dialect: ErrorDialect = OPENAI,
                        routed: bool = True) -> Admitted:
    """`txgateway.admission.admit` for an HTTP request: its key, and what it learns recorded."""
    key = caller_key(request)
    principal = await gateway.authenticator.authenticate(key)
    try:
        admitted = await admit(gateway, principal, key is not None, model, tokens, dialect,
                               routed)
    except Refusal as refusal:
        _record(request, exchange, refusal.caller)
        exchange.model = said(gateway, model)
        raise
    _record(request, exchange, admitted.caller)
    return admitted


async def within_limits(gateway: Gateway, request: Any, exchange: Exchange,
                        principal: Principal, tokens: int) -> None:
    """The limits step alone (`txgateway.admission.limited`), for calls that name no model."""
    try:
        caller = await limited(gateway, principal, tokens)
    except Refusal as refusal:
        _record(request, exchange, refusal.caller)
        raise
    _record(request, exchange, caller)


def _record(request: Any, exchange: Exchange, caller: Caller) -> None:
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


def is_event_stream(response: Any, provider: Any = None) -> bool:
    """
    Whether ``response`` is a stream to relay: SSE, or the content type a translating
    ``provider`` streams in when it says (``stream_content_type``, e.g. AWS event streams).
    """
    expected = (provider.stream_content_type if ITranslatingProvider.providedBy(provider)
                else b"text/event-stream")
    content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return content_type.startswith(expected)
