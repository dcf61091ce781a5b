"""
``POST /v1/messages`` and ``/v1/messages/count_tokens``: Anthropic's Messages API, for any
provider.

To an Anthropic provider the call takes the same-dialect fast path (the caller's body goes
upstream as it came, the model aside; the answer comes back untouched, usage read on the
side).  To any other provider the request is translated to OpenAI chat completions, the
internal shape, and the answer back (`txgateway.translate.messages_to_chat`).
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from txgateway.accounting import Exchange
from txgateway.dialects import anthropic
from txgateway.dialects.openai import BadRequest
from txgateway.gateway import Gateway
from txgateway.providers import ApiCall, dialect
from txgateway.routing import Target
from txgateway.tokens import estimate_messages_tokens
from txgateway.translate.messages_to_chat import (
    ChatToMessagesStream,
    chat_request,
    error_for,
    message,
)
from txgateway.upstream import UpstreamCall, UpstreamError
from txgateway.usage import Usage
from txgateway.web.relay import CLIENT_CLOSED, TranslatedStreamRelay, start_event_stream
from txgateway.web.resource import JSONResource, write_json

log = Logger()


def anthropic_error(request: Any, status: int, message: str) -> bytes:
    return write_json(request, status, anthropic.error_body(status, message))


def _stream_error(status: int, message: str, code: str) -> bytes:
    return anthropic.stream_error_event(status, message)


class _AnthropicEndpoint(JSONResource):
    """What the Messages and count_tokens endpoints share: parsing, routing, errors."""

    route = ""
    count_only = False

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def render_POST(self, request: Any) -> Any:
        gateway = self._gateway
        exchange = gateway.accountant.start(self.route)
        try:
            parsed = anthropic.parse_messages(request.content.getvalue(), self.count_only)
        except BadRequest as error:
            return self._refuse(request, exchange, 400, str(error))
        exchange.model = parsed.model
        exchange.stream = parsed.stream
        target = gateway.router.resolve(parsed.model)
        if target is None:
            return self._refuse(request, exchange, 404, f"model: {parsed.model}")
        exchange.provider = target.provider.name
        exchange.provider_kind = target.provider.kind
        exchange.upstream_model = target.model
        call = UpstreamCall(gateway.reactor, gateway.config.upstream)
        request.notifyFinish().addErrback(lambda _: call.abort())
        Deferred.fromCoroutine(self._guarded(request, exchange, parsed, target, call))
        return NOT_DONE_YET

    def _refuse(self, request: Any, exchange: Exchange, status: int, message: str) -> bytes:
        exchange.status = status
        exchange.error = message
        self._gateway.accountant.finish(exchange)
        return anthropic_error(request, status, message)

    async def _guarded(self, request: Any, exchange: Exchange,
                       parsed: anthropic.MessagesRequest, target: Target,
                       call: UpstreamCall) -> None:
        try:
            await self._proxy(request, exchange, parsed, target, call)
        except CancelledError:
            exchange.status = CLIENT_CLOSED
            exchange.error = "the client disconnected"
        except UpstreamError as error:
            exchange.status = error.status
            exchange.error = str(error)
            _finish(request, call, error.status, anthropic.error_body(error.status, str(error)))
        except Exception:
            log.failure("{route} for {model} failed", route=self.route, model=parsed.model)
            exchange.status = 500
            exchange.error = "internal error"
            _finish(request, call, 500, anthropic.error_body(500, "the gateway failed to answer"))
        finally:
            self._gateway.accountant.finish(exchange)

    async def _proxy(self, request: Any, exchange: Exchange, parsed: anthropic.MessagesRequest,
                     target: Target, call: UpstreamCall) -> None:
        raise NotImplementedError

    def _native(self, api: str, parsed: anthropic.MessagesRequest, target: Target) -> Any:
        return target.provider.build_request(ApiCall(
            api=api, body=anthropic.upstream_messages_body(parsed, target.model),
            parsed=parsed.parsed, model=target.model, stream=parsed.stream))

    def _answer(self, request: Any, exchange: Exchange, response: Any, call: UpstreamCall,
                body: bytes, native: bool) -> None:
        """A whole answer: an error in Anthropic's shape whatever the upstream said."""
        status = response.code
        exchange.status = status
        if status != 200:
            exchange.error = f"upstream status {status}"
            if not (native and anthropic.is_error_body(body)):
                status = status if 400 <= status < 600 else 502
                body = error_for(status, body)
            retry_after = response.headers.getRawHeaders(b"retry-after")
            if retry_after:
                request.setHeader(b"retry-after", retry_after[0])
        _finish(request, call, status, body)


class Messages(_AnthropicEndpoint):
    route = "messages"

    async def _proxy(self, request: Any, exchange: Exchange, parsed: anthropic.MessagesRequest,
                     target: Target, call: UpstreamCall) -> None:
        provider = target.provider
        native = dialect(provider) == "anthropic"
        if native:
            upstream_request = self._native("messages", parsed, target)
        else:
            chat = chat_request(parsed.parsed, target.model)
            upstream_request = provider.build_request(ApiCall(
                api="chat", body=orjson.dumps(chat), parsed=chat, model=target.model,
                stream=parsed.stream))
        response = await call.send(provider.agent, upstream_request)
        content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
        if parsed.stream and response.code == 200 and content_type.startswith(
                b"text/event-stream"):
            start_event_stream(request)
            exchange.status = 200
            translator = (anthropic.MessagesPassthrough() if native
                          else ChatToMessagesStream(target.model))
            relay = TranslatedStreamRelay(
                self._gateway.reactor, self._gateway.config.upstream, request, exchange, call,
                _stream_error, translator, len(parsed.raw))
            call.deliver(response, relay)
            await relay.done
            return
        exchange.first_byte = self._gateway.reactor.seconds()
        body = await call.read(response)
        if response.code == 200:
            try:
                answer = orjson.loads(body)
                if native:
                    exchange.usage = Usage.from_anthropic(answer.get("usage"))
                else:
                    answer, exchange.usage = message(answer)
                    body = orjson.dumps(answer)
            except (ValueError, AttributeError, TypeError):
                raise UpstreamError("the upstream's answer could not be read") from None
        self._answer(request, exchange, response, call, body, native)


class CountTokens(_AnthropicEndpoint):
    """Native for Anthropic providers; for others the local estimate of `txgateway.tokens`."""

    isLeaf = True
    route = "count_tokens"
    count_only = True

    async def _proxy(self, request: Any, exchange: Exchange, parsed: anthropic.MessagesRequest,
                     target: Target, call: UpstreamCall) -> None:
        provider = target.provider
        if dialect(provider) != "anthropic":
            # A count uses no tokens: the exchange records none.
            exchange.status = 200
            _finish(request, call, 200, orjson.dumps(
                {"input_tokens": estimate_messages_tokens(parsed.parsed)}))
            return
        response = await call.send(provider.agent, self._native("count_tokens", parsed, target))
        exchange.first_byte = self._gateway.reactor.seconds()
        body = await call.read(response)
        self._answer(request, exchange, response, call, body, True)


def _finish(request: Any, call: UpstreamCall, status: int, body: bytes) -> None:
    """Answer with a JSON body, unless the client has already gone."""
    if call.aborted:
        return
    request.write(write_json(request, status, body))
    request.finish()


def messages_tree(gateway: Gateway) -> Messages:
    """``messages`` with its ``count_tokens`` child, to mount under a ``v1``."""
    messages = Messages(gateway)
    messages.putChild(b"count_tokens", CountTokens(gateway))
    return messages
