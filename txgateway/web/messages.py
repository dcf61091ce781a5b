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
from zope.interface import implementer

from txgateway.dialects import anthropic
from txgateway.dialects.errors import ANTHROPIC
from txgateway.gateway import Gateway
from txgateway.providers import ANTHROPIC_WIRE, OPENAI_WIRE, ApiCall, UpstreamRequest, speaks
from txgateway.routing import Target
from txgateway.tokens import estimate_messages_tokens
from txgateway.translate.chain import ChainedStream
from txgateway.translate.messages_to_chat import (
    ChatToMessagesStream,
    chat_request,
    message,
)
from txgateway.usage import Usage
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.runner import CallEndpoint, ICodec, stream_type

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


class _AnthropicEndpoint(CallEndpoint):
    """What the Messages and count_tokens endpoints share: the dialect, the native request."""

    count_only = False
    errors = ANTHROPIC
    #: The anthropic SDK's ``_request_id`` is Anthropic's ``request-id``.
    request_id_headers = (b"x-request-id", b"request-id")
    error_event = staticmethod(_stream_error)

    def parse(self, raw: bytes) -> anthropic.MessagesRequest:
        return anthropic.parse_messages(raw, self.count_only)

    def error_body(self, status: int, message: str, code: str | None = None,
                   param: str | None = None) -> bytes:
        return anthropic.error_body(status, message)


class Messages(_AnthropicEndpoint):
    openapi = Endpoint("Anthropic", {"POST": Operation(
        "Create a message", "MessageRequest", "Message")})
    isLeaf = False  # count_tokens hangs below it
    route = "messages"

    def codec(self, request: Any, parsed: anthropic.MessagesRequest,
              target: Target) -> ICodec:
        if speaks(target.provider, ANTHROPIC_WIRE, target.model):
            return SameMessages("messages", _caller_headers(request))
        return MessagesOverChat(target)


@implementer(ICodec)
class SameMessages:
    """
    The identity codec of the Messages API (and count_tokens): the caller's body upstream,
    the model aside, with the caller's `FORWARDED` headers; the answer back untouched.
    """

    stream_type = b"text/event-stream"

    def __init__(self, api: str, headers: dict[str, str]) -> None:
        self._api = api
        self._headers = headers

    def request(self, parsed: anthropic.MessagesRequest, target: Target) -> UpstreamRequest:
        return target.provider.build_request(ApiCall(
            api=self._api, body=anthropic.upstream_messages_body(parsed, target.model),
            parsed=parsed.parsed, model=target.model, stream=parsed.stream,
            headers=self._headers))

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        if self._api != "messages":
            return body, None  # a count uses no tokens
        return body, Usage.from_anthropic(orjson.loads(body).get("usage"))

    def error(self, status: int, body: bytes) -> bytes:
        return body

    def transcoder(self, parsed: anthropic.MessagesRequest) -> Any:
        return anthropic.MessagesPassthrough()


@implementer(ICodec)
class MessagesOverChat:
    """
    The codec of the Messages API to any other provider: through OpenAI chat completions,
    the internal shape (a provider of a third dialect, Gemini say, translates that in turn).
    """

    def __init__(self, target: Target) -> None:
        provider: Any = target.provider
        self._provider = provider
        self._model = target.model
        self._translating = not speaks(provider, OPENAI_WIRE, target.model)
        self.stream_type = stream_type(provider)

    def request(self, parsed: anthropic.MessagesRequest, target: Target) -> UpstreamRequest:
        chat = chat_request(parsed.parsed, target.model)
        return self._provider.build_request(ApiCall(
            api="chat", body=orjson.dumps(chat), parsed=chat, model=target.model,
            stream=parsed.stream))

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        if self._translating:
            body = self._provider.translate_response(body)[0]
        answer, usage = message(orjson.loads(body))
        return orjson.dumps(answer), usage

    def error(self, status: int, body: bytes) -> bytes:
        if self._translating:
            return self._provider.translate_error(status, body) or body
        return body

    def transcoder(self, parsed: anthropic.MessagesRequest) -> Any:
        translator: Any = ChatToMessagesStream(self._model)
        if self._translating:
            translator = ChainedStream(self._provider.stream_translator(True), translator)
        return translator


class CountTokens(_AnthropicEndpoint):
    openapi = Endpoint("Anthropic", {"POST": Operation(
        "Count a message's tokens", "CountTokensRequest")})
    """Native for Anthropic providers; for others the local estimate of `txgateway.tokens`."""

    route = "count_tokens"
    count_only = True

    def codec(self, request: Any, parsed: anthropic.MessagesRequest,
              target: Target) -> ICodec:
        if speaks(target.provider, ANTHROPIC_WIRE):
            return SameMessages("count_tokens", _caller_headers(request))
        return Estimate(parsed)


@implementer(ICodec)
class Estimate:
    """The codec of a count no upstream makes: the local estimate, answered at once."""

    stream_type = b""

    def __init__(self, parsed: anthropic.MessagesRequest) -> None:
        self._parsed = parsed

    def request(self, parsed: anthropic.MessagesRequest, target: Target) -> None:
        return None

    def answer(self, body: bytes) -> tuple[bytes, None]:
        # A count uses no tokens: the call records none.
        return orjson.dumps({"input_tokens": estimate_messages_tokens(self._parsed.parsed)}), None

    def error(self, status: int, body: bytes) -> bytes:
        return body

    def transcoder(self, parsed: anthropic.MessagesRequest) -> Any:
        raise NotImplementedError("a count is never streamed")


def messages_tree(gateway: Gateway) -> Messages:
    """``messages`` with its ``count_tokens`` child, to mount under a ``v1``."""
    messages = Messages(gateway)
    messages.putChild(b"count_tokens", CountTokens(gateway))
    return messages
