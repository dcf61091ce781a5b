"""
What the stateless OpenAI REST endpoints (embeddings, images, audio) share: the check that
the routed provider serves the API, the whole answer with its usage, and two relays for
answers that stream: raw bytes (speech audio) and SSE events peeked for their usage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from zope.interface import implementer

from txgateway.accounting import Exchange
from txgateway.dialects.openai import error_body, loads_object, stream_error_event
from txgateway.providers import OPENAI_WIRE, speaks
from txgateway.routing import Target
from txgateway.streams import EventSplitter, data_of, events
from txgateway.upstream import UpstreamCall, UpstreamError
from txgateway.usage import Usage
from txgateway.web.proxy import ProxyEndpoint
from txgateway.web.relay import Bytes, ITranscoder, Relay
from txgateway.web.runner import refused_api

UsageReader = Callable[[Any, "Usage | None"], "Usage | None"]
"""Reads usage from a parsed answer or event, given the usage seen so far."""

#: Response headers of the upstream's that describe the body and are passed to the caller.
PASSED_HEADERS = (b"content-type", b"content-disposition")


class RestEndpoint(ProxyEndpoint):
    """An OpenAI endpoint of one API family (``api``), in OpenAI's error dialect."""

    api = ""
    error_body = staticmethod(error_body)

    def served(self, model: str, target: Target) -> None:
        """Raises the 400 of a provider that does not offer ``api`` in OpenAI's dialect."""
        provider = target.provider
        if self.api not in provider.apis or not speaks(provider, OPENAI_WIRE):
            raise refused_api(self.api, model, target)

    def answer(self, request: Any, exchange: Exchange, response: Any, call: UpstreamCall,
               body: bytes, read_usage: UsageReader | None) -> None:
        """
        A whole answer, passed on as the upstream wrote it (its content type kept); a 200's
        usage read on the side when it is JSON (a JSON one that does not parse is a 502), an
        error made an OpenAI error object.
        """
        if response.code != 200:
            self.answer_error(request, exchange, response, call, body)
            return
        content_type = response.headers.getRawHeaders(b"content-type", [b"application/json"])[0]
        if b"json" in content_type and exchange.usage is None:
            answer = loads_object(body)
            if answer is None:
                raise UpstreamError("the upstream's answer could not be read")
            if read_usage is not None:
                exchange.usage = read_usage(answer, None)
        exchange.status = 200
        if call.aborted:
            return
        request.setResponseCode(200)
        request.setHeader(b"content-type", content_type)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def start_relayed(request: Any, response: Any) -> None:
    """Start a 200 whose body is relayed as it comes: the upstream's content headers kept."""
    request.setResponseCode(200)
    for name in PASSED_HEADERS:
        value = response.headers.getRawHeaders(name)
        if value:
            request.setHeader(name, value[0])
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"x-accel-buffering", b"no")


def bytes_relay(gateway: Any, request: Any, exchange: Exchange, call: UpstreamCall,
                request_size: int) -> Relay:
    """
    The relay of a binary body (speech audio), chunk by chunk as it arrives; one that breaks
    drops the client's connection.
    """
    return Relay(gateway, request, exchange, call, None,
                 Bytes(), request_size)


@implementer(ITranscoder)
class UsageEvents:
    """
    The same-dialect transcoder (`txgateway.web.relay.ITranscoder`) of an SSE stream in
    OpenAI's event format: whole events as they came, the usage of those that carry one read
    (``read_usage`` given the parsed event and the usage so far).
    """

    error = None
    chunks = 0

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


def event_relay(gateway: Any, request: Any, exchange: Exchange, call: UpstreamCall,
                read_usage: UsageReader, request_size: int) -> Relay:
    """The relay of an SSE stream in OpenAI's format, its usage read by ``read_usage``."""
    return Relay(gateway, request, exchange, call,
                 stream_error_event, UsageEvents(read_usage), request_size)


def usage_reader(read: Callable[[Any], Usage | None]) -> UsageReader:
    """A `UsageReader` for answers whose ``usage`` member ``read`` reads; the last one wins."""

    def reader(answer: Any, seen: Usage | None) -> Usage | None:
        if not isinstance(answer, dict):
            return None
        return read(answer.get("usage"))

    return reader

