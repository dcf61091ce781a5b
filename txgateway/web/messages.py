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

from txgateway.accounting import Exchange
from txgateway.dialects import anthropic
from txgateway.dialects.errors import ANTHROPIC
from txgateway.gateway import Gateway
from txgateway.providers import ANTHROPIC_WIRE, OPENAI_WIRE, ApiCall, speaks
from txgateway.routing import Target
from txgateway.tokens import estimate_messages_tokens
from txgateway.translate.chain import ChainedStream
from txgateway.translate.messages_to_chat import (
    ChatToMessagesStream,
    chat_request,
    message,
)
from txgateway.upstream import UpstreamCall, UpstreamError
from txgateway.usage import Usage
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.proxy import ProxyEndpoint, finish, is_event_stream
from txgateway.web.relay import Relay, start_event_stream

#: Caller headers that choose the upstream's behaviour on the fast path: the wire version the
#: caller's SDK speaks, and the beta features (prompt caching, longer output...) it turns on.
FORWARDED = (b"anthropic-version", b"anthropic-beta")


def _stream_error(status: int, message: str, code: str) -> bytes:
    return anthropic.stream_error_event(status, message)


def _caller_headers(request: Any) -> dict[str, str]:
    """The `FORWARDED` headers the caller sent, repeated ones joined with commas."""
    found = {}
    for name in FORWARDED:
        values = request.requestHeaders.getRawHeaders(name)
        if values:
            found[name.decode()] = ",".join(value.decode("latin-1") for value in values)
    return found


class _AnthropicEndpoint(ProxyEndpoint):
    """What the Messages and count_tokens endpoints share: the dialect, the native request."""

    count_only = False
    errors = ANTHROPIC
    #: The anthropic SDK's ``_request_id`` is Anthropic's ``request-id``.
    request_id_headers = (b"x-request-id", b"request-id")

    def parse(self, raw: bytes) -> anthropic.MessagesRequest:
        return anthropic.parse_messages(raw, self.count_only)

    def error_body(self, status: int, message: str, code: str | None = None,
                   param: str | None = None) -> bytes:
        return anthropic.error_body(status, message)

    def _native(self, request: Any, api: str, parsed: anthropic.MessagesRequest,
                target: Target) -> Any:
        return target.provider.build_request(ApiCall(
            api=api, body=anthropic.upstream_messages_body(parsed, target.model),
            parsed=parsed.parsed, model=target.model, stream=parsed.stream,
            headers=_caller_headers(request)))

    def _answer(self, request: Any, exchange: Exchange, response: Any, call: UpstreamCall,
                body: bytes) -> None:
        if response.code != 200:
            self.answer_error(request, exchange, response, call, body)
            return
        exchange.status = 200
        finish(request, call, 200, body)


class Messages(_AnthropicEndpoint):
    openapi = Endpoint("Anthropic", {"POST": Operation(
        "Create a message", "MessageRequest", "Message")})
    isLeaf = False  # count_tokens hangs below it
    route = "messages"

    async def proxy(self, request: Any, exchange: Exchange, parsed: anthropic.MessagesRequest,
                     target: Target, call: UpstreamCall) -> None:
        provider = target.provider
        native = speaks(provider, ANTHROPIC_WIRE, target.model)
        # A provider of a third dialect (Gemini...) translates to OpenAI chat and back first.
        translating = not native and not speaks(provider, OPENAI_WIRE, target.model)
        if native:
            upstream_request = self._native(request, "messages", parsed, target)
        else:
            chat = chat_request(parsed.parsed, target.model)
            upstream_request = provider.build_request(ApiCall(
                api="chat", body=orjson.dumps(chat), parsed=chat, model=target.model,
                stream=parsed.stream))
        response = await call.send(provider.agent, upstream_request)
        if parsed.stream and response.code == 200 and is_event_stream(response, provider):
            start_event_stream(request)
            exchange.status = 200
            translator = (anthropic.MessagesPassthrough() if native
                          else ChatToMessagesStream(target.model))
            if translating:
                translator = ChainedStream(provider.stream_translator(True), translator)
            relay = Relay(self._gateway, request, exchange, call,
                _stream_error, translator, len(parsed.raw))
            call.deliver(response, relay)
            await relay.done
            return
        exchange.first_byte = self._gateway.reactor.seconds()
        body = await call.read(response)
        if translating and response.code != 200:
            body = provider.translate_error(response.code, body) or body
        if response.code == 200:
            try:
                if translating:
                    body = provider.translate_response(body)[0]
                answer = orjson.loads(body)
                if native:
                    exchange.usage = Usage.from_anthropic(answer.get("usage"))
                else:
                    answer, exchange.usage = message(answer)
                    body = orjson.dumps(answer)
            except (ValueError, AttributeError, TypeError):
                raise UpstreamError("the upstream's answer could not be read") from None
        self._answer(request, exchange, response, call, body)


class CountTokens(_AnthropicEndpoint):
    openapi = Endpoint("Anthropic", {"POST": Operation(
        "Count a message's tokens", "CountTokensRequest")})
    """Native for Anthropic providers; for others the local estimate of `txgateway.tokens`."""

    route = "count_tokens"
    count_only = True

    async def proxy(self, request: Any, exchange: Exchange, parsed: anthropic.MessagesRequest,
                     target: Target, call: UpstreamCall) -> None:
        provider = target.provider
        if not speaks(provider, ANTHROPIC_WIRE):
            # A count uses no tokens: the exchange records none.
            exchange.status = 200
            finish(request, call, 200, orjson.dumps(
                {"input_tokens": estimate_messages_tokens(parsed.parsed)}))
            return
        upstream_request = self._native(request, "count_tokens", parsed, target)
        response = await call.send(provider.agent, upstream_request)
        exchange.first_byte = self._gateway.reactor.seconds()
        body = await call.read(response)
        self._answer(request, exchange, response, call, body)


def messages_tree(gateway: Gateway) -> Messages:
    """``messages`` with its ``count_tokens`` child, to mount under a ``v1``."""
    messages = Messages(gateway)
    messages.putChild(b"count_tokens", CountTokens(gateway))
    return messages
