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

from txgateway.accounting import Exchange
from txgateway.dialects.openai import loads_object
from txgateway.gateway import Gateway
from txgateway.providers import ApiCall
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
from txgateway.upstream import UpstreamCall, UpstreamError
from txgateway.usage import Usage
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.responses import (
    Responses,
    ResponsesRequest,
    native_responses,
)
from txgateway.web.runner import finish


class _ResponsesInput(Responses):
    """Parsed and admitted as ``/v1/responses`` is; a native call goes to a path below it."""

    isLeaf = True
    path = b""

    async def _forward(self, request: Any, exchange: Exchange, parsed: ResponsesRequest,
                       target: Target, call: UpstreamCall) -> None:
        response = await call.send(target.provider.agent,
                                   self._native_request(parsed, target, self.path))
        exchange.first_byte = self._gateway.reactor.seconds()
        body = await call.read(response)
        if response.code == 200:
            answer = loads_object(body)
            if answer is None:
                raise UpstreamError("the upstream's answer could not be read")
            exchange.usage = Usage.from_responses(answer.get("usage"))
        self._answer(request, exchange, response, call, body)


class InputTokens(_ResponsesInput):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Count a response's input tokens", "ResponseRequest")})
    """Native, or the local estimate: a count uses no tokens, and the exchange records none."""

    route = "responses_input_tokens"
    path = b"/input_tokens"

    async def proxy(self, request: Any, exchange: Exchange, parsed: ResponsesRequest,
                    target: Target, call: UpstreamCall) -> None:
        if native_responses(target):
            await self._forward(request, exchange, parsed, target, call)
            return
        chat = self._chat(parsed, target, chat_request)
        count = estimate_messages_tokens(messages_request(chat, target.model, 1))
        exchange.status = 200
        finish(request, call, 200, orjson.dumps(
            {"object": "response.input_tokens", "input_tokens": count}))


class Compact(_ResponsesInput):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Compact a conversation", "ResponseRequest")})
    """Native, or a summary made by the routed chat model (see the module's docstring)."""

    route = "responses_compact"
    path = b"/compact"

    async def proxy(self, request: Any, exchange: Exchange, parsed: ResponsesRequest,
                    target: Target, call: UpstreamCall) -> None:
        if native_responses(target):
            await self._forward(request, exchange, parsed, target, call)
            return
        provider = target.provider
        chat = self._chat(parsed, target, compaction_request)
        response = await call.send(provider.agent, provider.build_request(ApiCall(
            api="chat", body=orjson.dumps(chat), parsed=chat, model=target.model,
            stream=False)))
        completion = await self._chat_completion(request, exchange, response, call, target)
        if completion is None:
            return
        try:
            summary = completion["choices"][0]["message"]["content"]
        except (LookupError, TypeError):
            raise UpstreamError("the upstream's answer could not be read") from None
        if not isinstance(summary, str) or not summary:
            raise UpstreamError("the model wrote no summary of the conversation")
        exchange.usage = Usage.from_openai(completion.get("usage"))
        items = [*(parsed.history or []), *input_items(parsed.parsed.get("input"))]
        answer = {"id": new_id("resp"), "object": "response.compaction",
                  "created_at": int(self._gateway.reactor.seconds()),
                  "output": compacted_output(items, summary),
                  "usage": responses_usage(exchange.usage)}
        exchange.status = 200
        finish(request, call, 200, orjson.dumps(answer))


def responses_tree(gateway: Gateway) -> Responses:
    """``responses`` with ``input_tokens`` and ``compact`` below it, to mount under a ``v1``."""
    responses = Responses(gateway)
    responses.putChild(b"input_tokens", InputTokens(gateway))
    responses.putChild(b"compact", Compact(gateway))
    return responses
