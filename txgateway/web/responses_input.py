"""
``POST /v1/responses/input_tokens`` and ``/v1/responses/compact``: what a Responses input
would cost, and the input compacted, for any provider.

Both take a Responses request, whose ``previous_response_id`` or ``conversation`` lends its
history as on ``/v1/responses``.  A provider that serves the Responses API gets the call on
its own ``/responses/input_tokens`` or ``/responses/compact``.  For the others the gateway
answers itself: the count is the local estimate of `txgateway.tokens` over the request as the
model will read it; the compaction is a chat call that summarises the conversation, whose
summary rides in a ``compaction`` item that the translator puts back before the model when it
comes back as input (`txgateway.translate.responses_to_chat`).
"""

from __future__ import annotations

from typing import Any

import orjson
from zope.interface import implementer

from txgateway.gateway import Gateway
from txgateway.providers import OPENAI_WIRE, ApiCall, UpstreamRequest, translating
from txgateway.routing import Target
from txgateway.tokens import estimate_messages_tokens
from txgateway.translate.chat_to_messages import messages_request
from txgateway.translate.responses_to_chat import (
    chat_request,
    compacted_output,
    compaction_request,
    input_items,
    new_id,
    responses_usage,
)
from txgateway.upstream import UpstreamError
from txgateway.usage import Usage
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.responses import (
    NativeCall,
    Responses,
    ResponsesRequest,
    chat_completion,
    chat_error,
    chat_of,
    native_responses,
)
from txgateway.web.runner import ICodec, stream_type


class _ResponsesInput(Responses):
    """
    Parsed and admitted as ``/v1/responses`` is; a native call goes to its ``path`` below the
    provider's own, the others to the endpoint's `translated` codec.
    """

    isLeaf = True
    path = b""

    def codec(self, request: Any, parsed: ResponsesRequest, target: Target) -> ICodec:
        if native_responses(target):
            return NativeCall(target, self.path)
        return self.translated(parsed, target)

    def translated(self, parsed: ResponsesRequest, target: Target) -> ICodec:
        """The codec of the call to a provider that does not serve the Responses API."""
        raise NotImplementedError


class InputTokens(_ResponsesInput):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Count a response's input tokens", "ResponseRequest")})
    """Native, or the local estimate: a count uses no tokens, and the exchange records none."""

    route = "responses_input_tokens"
    path = b"/input_tokens"

    def translated(self, parsed: ResponsesRequest, target: Target) -> ICodec:
        chat = chat_of(parsed, target, chat_request)
        return InputEstimate(estimate_messages_tokens(messages_request(chat, target.model, 1)))


class Compact(_ResponsesInput):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Compact a conversation", "ResponseRequest")})
    """Native, or a summary made by the routed chat model (see the module's docstring)."""

    route = "responses_compact"
    path = b"/compact"

    def translated(self, parsed: ResponsesRequest, target: Target) -> ICodec:
        return CompactOverChat(self._gateway.reactor, parsed, target)


@implementer(ICodec)
class InputEstimate:
    """The codec of a count no upstream makes: the local estimate, answered at once."""

    stream_type = b""

    def __init__(self, count: int) -> None:
        self._count = count

    def request(self, parsed: ResponsesRequest, target: Target) -> None:
        return None

    def answer(self, body: bytes) -> tuple[bytes, None]:
        # A count uses no tokens: the call records none.
        return orjson.dumps({"object": "response.input_tokens", "input_tokens": self._count}), None

    def error(self, status: int, body: bytes) -> bytes:
        return body

    def transcoder(self, parsed: ResponsesRequest) -> Any:
        raise NotImplementedError("a count is never streamed")


@implementer(ICodec)
class CompactOverChat:
    """
    The codec of a compaction by a provider that does not serve the Responses API: a chat
    call that summarises the conversation (never streamed), its summary answered as the
    compacted output.
    """

    def __init__(self, clock: Any, parsed: ResponsesRequest, target: Target) -> None:
        self._clock = clock
        self._parsed = parsed
        self._translator = translating(target.provider, OPENAI_WIRE, target.model)
        self.stream_type = stream_type(target.provider)

    def request(self, parsed: ResponsesRequest, target: Target) -> UpstreamRequest:
        chat = chat_of(parsed, target, compaction_request)
        return target.provider.build_request(ApiCall(
            api="chat", body=orjson.dumps(chat), parsed=chat, model=target.model,
            stream=False))

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        completion = chat_completion(self._translator, body)
        try:
            summary = completion["choices"][0]["message"]["content"]
        except (LookupError, TypeError):
            raise UpstreamError("the upstream's answer could not be read") from None
        if not isinstance(summary, str) or not summary:
            raise UpstreamError("the model wrote no summary of the conversation")
        usage = Usage.from_openai(completion.get("usage"))
        items = [*(self._parsed.history or []), *input_items(self._parsed.parsed.get("input"))]
        return orjson.dumps({"id": new_id("resp"), "object": "response.compaction",
                             "created_at": int(self._clock.seconds()),
                             "output": compacted_output(items, summary),
                             "usage": responses_usage(usage)}), usage

    def error(self, status: int, body: bytes) -> bytes:
        return chat_error(self._translator, status, body)

    def transcoder(self, parsed: ResponsesRequest) -> Any:
        raise NotImplementedError("a compaction is never streamed")


def responses_tree(gateway: Gateway) -> Responses:
    """``responses`` with ``input_tokens`` and ``compact`` below it, to mount under a ``v1``."""
    responses = Responses(gateway)
    responses.putChild(b"input_tokens", InputTokens(gateway))
    responses.putChild(b"compact", Compact(gateway))
    return responses
