"""
``POST /v1/chat/completions``: the OpenAI chat API, proxied to the provider behind the model.

The same-dialect fast path: the caller's body goes upstream as it came unless a field must
change (`upstream_chat_body`), and the answer comes back as the upstream sent it; usage is
read on the side.  Streams are relayed event by event as they arrive, with backpressure (the
client's connection is the producer's consumer) and an upstream abort when the client leaves.
"""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from txgateway.dialects.openai import ChatRequest, loads_object, parse_chat, upstream_chat_body
from txgateway.providers import OPENAI_WIRE, ApiCall, UpstreamRequest, speaks
from txgateway.routing import Target
from txgateway.streams import EventSplitter, data_of, events
from txgateway.usage import Usage
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.relay import ITranscoder
from txgateway.web.runner import CallEndpoint, ICodec, stream_type


class ChatCompletions(CallEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Create a chat completion", "ChatCompletionRequest", "ChatCompletion")})
    route = "chat"
    #: The API family asked of the provider (legacy completions share this endpoint's code).
    api = "chat"
    parse = staticmethod(parse_chat)

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        self._same = SameChat(self.api)

    def codec(self, request: Any, parsed: ChatRequest, target: Target) -> ICodec:
        # Providers that answer in another dialect translate the parsed request themselves.
        if speaks(target.provider, OPENAI_WIRE):
            return self._same
        return TranslatedChat(self.api, target.provider)


@implementer(ICodec)
class SameChat:
    """
    The identity codec of the OpenAI chat (or legacy completions) API: the caller's body
    goes upstream as it came unless a field must change (`upstream_chat_body`), the answer
    and the stream's events come back as they were, their usage read on the side.
    """

    stream_type = b"text/event-stream"

    def __init__(self, api: str) -> None:
        self._api = api

    def request(self, chat: ChatRequest, target: Target) -> UpstreamRequest:
        return target.provider.build_request(ApiCall(
            api=self._api, body=upstream_chat_body(chat, target.model), parsed=chat.parsed,
            model=target.model, stream=chat.stream))

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        answer = loads_object(body)
        if answer is None:
            raise ValueError("not a JSON object")
        return body, Usage.from_openai(answer.get("usage"))

    def error(self, status: int, body: bytes) -> bytes:
        return body

    def transcoder(self, chat: ChatRequest) -> ITranscoder:
        return ChatEvents(chat.wants_usage)


@implementer(ICodec)
class TranslatedChat:
    """The codec of a provider that translates the chat API to its own dialect and back."""

    def __init__(self, api: str, provider: Any) -> None:
        self._api = api
        self._provider = provider
        self.stream_type = stream_type(provider)

    def request(self, chat: ChatRequest, target: Target) -> UpstreamRequest:
        return self._provider.build_request(ApiCall(
            api=self._api, body=chat.raw, parsed=chat.parsed, model=target.model,
            stream=chat.stream))

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        translated: tuple[bytes, Usage | None] = self._provider.translate_response(body)
        return translated

    def error(self, status: int, body: bytes) -> bytes:
        return self._provider.translate_error(status, body) or body

    def transcoder(self, chat: ChatRequest) -> Any:
        return self._provider.stream_translator(chat.wants_usage)


@implementer(ITranscoder)
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
        self.complete = False

    def feed(self, data: bytes) -> bytes:
        run = self._splitter.feed(data)
        if not run:
            return run
        if run.startswith(b"data: [DONE]") or b"\ndata: [DONE]" in run:
            self.complete = True
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
