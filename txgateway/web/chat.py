"""
``POST /v1/chat/completions``: the OpenAI chat API, proxied to the provider behind the model.

The same-dialect fast path: the caller's body goes upstream as it came unless a field must
change (`upstream_chat_body`), and the answer comes back as the upstream sent it; usage is
read on the side.  Streams are relayed event by event as they arrive, with backpressure (the
client's connection is the producer's consumer) and an upstream abort when the client leaves.
"""

from __future__ import annotations

from typing import Any

from txgateway.accounting import Exchange
from txgateway.dialects.openai import (
    ChatRequest,
    error_body,
    loads_object,
    parse_chat,
    stream_error_event,
    upstream_chat_body,
)
from txgateway.providers import OPENAI_WIRE, ApiCall, speaks
from txgateway.routing import Target
from txgateway.streams import EventSplitter, data_of, events
from txgateway.upstream import UpstreamCall, UpstreamError
from txgateway.usage import Usage
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.proxy import ProxyEndpoint, finish, is_event_stream
from txgateway.web.relay import Relay, start_event_stream


class ChatCompletions(ProxyEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Create a chat completion", "ChatCompletionRequest", "ChatCompletion")})
    route = "chat"
    #: The API family asked of the provider (legacy completions share this endpoint's code).
    api = "chat"
    parse = staticmethod(parse_chat)
    error_body = staticmethod(error_body)

    async def proxy(self, request: Any, exchange: Exchange, chat: ChatRequest, target: Target,
                    call: UpstreamCall) -> None:
        provider = target.provider
        # Providers that answer in another dialect translate the parsed request themselves.
        translating = not speaks(provider, OPENAI_WIRE)
        upstream_request = provider.build_request(ApiCall(
            api=self.api,
            body=chat.raw if translating else upstream_chat_body(chat, target.model),
            parsed=chat.parsed, model=target.model, stream=chat.stream,
        ))
        response = await call.send(provider.agent, upstream_request)
        if chat.stream and response.code == 200 and is_event_stream(response, provider):
            await self._relay(request, exchange, chat, call, response,
                              provider if translating else None)
            return
        exchange.first_byte = self._gateway.reactor.seconds()
        body = await call.read(response)
        if translating:
            body = _translated(provider, exchange, response.code, body)
        self._answer(request, exchange, response, call, body)

    def _answer(self, request: Any, exchange: Exchange, response: Any, call: UpstreamCall,
                body: bytes) -> None:
        if response.code != 200:
            self.answer_error(request, exchange, response, call, body)
            return
        if exchange.usage is None:  # a translating provider has read it already
            answer = loads_object(body)
            if answer is None:
                raise UpstreamError("the upstream's answer could not be read")
            exchange.usage = Usage.from_openai(answer.get("usage"))
        exchange.status = 200
        finish(request, call, 200, body)

    async def _relay(self, request: Any, exchange: Exchange, chat: ChatRequest,
                     call: UpstreamCall, response: Any, translating: Any) -> None:
        start_event_stream(request)
        exchange.status = 200
        transcoder = (ChatEvents(chat.wants_usage) if translating is None
                      else translating.stream_translator(chat.wants_usage))
        relay = Relay(self._gateway, request, exchange,
                      call, stream_error_event, transcoder, len(chat.raw))
        call.deliver(response, relay)
        await relay.done


def _translated(provider: Any, exchange: Exchange, status: int, body: bytes) -> bytes:
    """A translating provider's whole answer, in OpenAI's format where it can be."""
    if status == 200:
        try:
            body, exchange.usage = provider.translate_response(body)
        except (ValueError, TypeError, AttributeError, KeyError):
            raise UpstreamError("the upstream's answer could not be read") from None
        return body
    return provider.translate_error(status, body) or body


class ChatEvents:
    """
    The same-dialect transcoder (`txgateway.web.relay.ITranscoder`) of a chat completions
    stream: whole events as they came.  It looks into them only where the bytes say usage is
    there (``"prompt_tokens"``), to count it and to drop the usage-only chunk the gateway asked
    for on the caller's behalf, or an error (``"error"`` as a key), to record it.
    """

    def __init__(self, wants_usage: bool) -> None:
        self._wants_usage = wants_usage
        self._splitter = EventSplitter()
        self.usage: Usage | None = None
        self.error: tuple[int, str] | None = None
        self.chunks = 0

    def feed(self, data: bytes) -> bytes:
        run = self._splitter.feed(data)
        if not run:
            return run
        if b'"prompt_tokens"' in run:
            run = self._take_usage(run)
        if b'"error"' in run and self.error is None:
            self._take_error(run)
        self.chunks += run.count(b"data:") - run.count(b"data: [DONE]")
        return run

    def _take_usage(self, run: bytes) -> bytes:
        kept = []
        for event in events(run):
            payload = data_of(event)
            if b'"prompt_tokens"' in payload:
                chunk = loads_object(payload)
                if chunk is not None:
                    usage = Usage.from_openai(chunk.get("usage"))
                    if usage is not None:
                        self.usage = usage
                        if not self._wants_usage and not chunk.get("choices"):
                            continue
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def _take_error(self, run: bytes) -> None:
        for event in events(run):
            chunk = loads_object(data_of(event))
            error = None if chunk is None else chunk.get("error")
            if isinstance(error, dict):
                self.error = (502, str(error.get("message", "")))
                return

    def finish(self) -> bytes:
        return self._splitter.pending
