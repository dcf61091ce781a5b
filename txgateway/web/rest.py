"""
What the stateless OpenAI REST families (embeddings, images, audio, legacy completions) share
on the call pipeline (`txgateway.web.runner`): the check that the routed provider serves the
API in OpenAI's dialect (`served`; `served_by` for an endpoint with a single codec), the
identity codec with its usage reader (`PassingRest` for answers that are not JSON), and the
transcoder of their SSE streams.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import orjson
from zope.interface import implementer

from txgateway.dialects.openai import loads_object
from txgateway.dialects.openai_rest import usage_of
from txgateway.providers import OPENAI_WIRE, ApiCall, UpstreamRequest, speaks
from txgateway.routing import Target
from txgateway.streams import EventSplitter, data_of, events
from txgateway.usage import Usage
from txgateway.web.relay import ITranscoder
from txgateway.web.runner import ICodec, IPassingCodec, refused_api

UsageReader = Callable[[Any, "Usage | None"], "Usage | None"]
"""Reads usage from a parsed answer or event, given the usage seen so far."""


def served(api: str, model: str, target: Target) -> None:
    """Raises the 400 of a provider that does not offer ``api`` in OpenAI's dialect."""
    provider = target.provider
    if api not in provider.apis or not speaks(provider, OPENAI_WIRE):
        raise refused_api(api, model, target)


class CodecChoice(Protocol):
    """A `txgateway.web.runner.CallEndpoint.codec`, as a static method."""

    def __call__(self, request: Any, parsed: Any, target: Target) -> ICodec: ...


def served_by(codec: SameRest) -> CodecChoice:
    """
    The `txgateway.web.runner.CallEndpoint.codec` of an endpoint whose every call takes
    ``codec``, to a provider that offers its API in OpenAI's dialect.
    """

    def select(request: Any, parsed: Any, target: Target) -> ICodec:
        served(codec.api, parsed.model, target)
        return codec

    return select


@implementer(ICodec)
class SameRest:
    """
    The identity codec of an OpenAI REST API (``api``) to a server that speaks it: the
    caller's body goes up as it came (the model aside), the answer and the stream's events
    come back as they were, their usage read on the side (``read_usage``).
    """

    stream_type = b"text/event-stream"

    def __init__(self, api: str, read_usage: UsageReader) -> None:
        self.api = api
        self.read_usage = read_usage

    def request(self, rest: Any, target: Target) -> UpstreamRequest:
        """``rest``: the caller's `txgateway.dialects.openai_rest.RestRequest`."""
        return target.provider.build_request(ApiCall(
            api=self.api, body=rest.upstream_body(target.model), parsed=rest.parsed,
            model=target.model, stream=rest.stream))

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        answer = loads_object(body)
        if answer is None:
            raise ValueError("not a JSON object")
        return body, self.read_usage(answer, None)

    def error(self, status: int, body: bytes) -> bytes:
        return body

    def transcoder(self, rest: Any) -> ITranscoder:
        return UsageEvents(self.read_usage)


@implementer(IPassingCodec)
class PassingRest(SameRest):
    """`SameRest` whose 200s that are not JSON (speech audio, a transcript as text) pass
    as the upstream wrote them."""


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


@implementer(ITranscoder)
class UsageEvents:
    """
    The same-dialect transcoder (`txgateway.web.relay.ITranscoder`) of an SSE stream in
    OpenAI's event format: whole events as they came, the usage of those that carry one read
    (``read_usage`` given the parsed event and the usage so far).
    """

    error = None
    chunks = 0
    #: Its streams (transcripts, speech) have no last event to tell a whole answer by.
    complete = False

    def __init__(self, read_usage: UsageReader) -> None:
        self._read_usage = read_usage
        self._splitter = EventSplitter()
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        run = self._splitter.feed(data)
        if b'"usage"' in run:
            for event in events(run):
                payload = data_of(event)
                if b'"usage"' in payload:
                    usage = self._read_usage(_loads(payload), self.usage)
                    if usage is not None:
                        self.usage = usage
        return run

    def finish(self) -> bytes:
        return self._splitter.pending


def read_openai_usage(answer: Any, seen: Usage | None) -> Usage | None:
    """The `UsageReader` of answers and events whose ``usage`` member is OpenAI's REST usage
    (`txgateway.dialects.openai_rest.usage_of`); the last one wins."""
    if not isinstance(answer, dict):
        return None
    return usage_of(answer.get("usage"))
