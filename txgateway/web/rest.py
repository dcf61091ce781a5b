"""
What the stateless OpenAI REST endpoints (embeddings, images, audio) share: the check that
the routed provider serves the API, the whole answer with its usage, and two relays for
answers that stream: raw bytes (speech audio) and SSE events peeked for their usage.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from twisted.python.failure import Failure

from txgateway.accounting import Exchange
from txgateway.config import UpstreamSettings
from txgateway.dialects.openai import error_body, loads_object, stream_error_event
from txgateway.providers import dialect
from txgateway.routing import Target
from txgateway.streams import EventSplitter, data_of, events
from txgateway.upstream import UpstreamCall, UpstreamError
from txgateway.usage import Usage, estimate_tokens
from txgateway.web.proxy import ProxyEndpoint, finish
from txgateway.web.relay import StreamRelay

UsageReader = Callable[[Any, "Usage | None"], "Usage | None"]
"""Reads usage from a parsed answer or event, given the usage seen so far."""

#: Response headers of the upstream's that describe the body and are passed to the caller.
PASSED_HEADERS = (b"content-type", b"content-disposition")


class RestEndpoint(ProxyEndpoint):
    """An OpenAI endpoint of one API family (``api``), in OpenAI's error dialect."""

    api = ""
    error_body = staticmethod(error_body)

    def refused_api(self, request: Any, exchange: Exchange, call: UpstreamCall,
                    target: Target, translated: bool = False) -> bool:
        return refused_api(self.api, request, exchange, call, target, translated)

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


def refused_api(api: str, request: Any, exchange: Exchange, call: UpstreamCall,
                target: Target, translated: bool = False) -> bool:
    """
    Answers 400 and returns True when the provider does not serve ``api`` (or speaks another
    dialect where the endpoint cannot translate, ``translated`` false).
    """
    provider = target.provider
    if api in provider.apis and (translated or dialect(provider) == "openai"):
        return False
    message = (f"the model `{exchange.model}` is served by the provider "
               f"`{provider.name}`, which does not offer the {api} API")
    exchange.status = 400
    exchange.error = message
    finish(request, call, 400, error_body(400, message, "unsupported_api", "model"))
    return True


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


class BytesRelay(StreamRelay):
    """
    Relays a binary body (speech audio) chunk by chunk as it arrives, with backpressure.  A
    body that breaks is not finished cleanly: the client's connection is dropped, so that it
    cannot take a truncated file for a whole one.
    """

    def __init__(self, reactor: Any, settings: UpstreamSettings, request: Any,
                 exchange: Exchange, call: UpstreamCall, request_size: int) -> None:
        super().__init__(reactor, settings, request, exchange, call, stream_error_event)
        self._request_size = request_size

    def received(self, data: bytes) -> None:
        if self._exchange.first_byte is None:
            self._exchange.first_byte = self._reactor.seconds()
        self._request.write(data)

    def estimate(self) -> Usage:
        return Usage(input_tokens=estimate_tokens(self._request_size), estimated=True)

    def ended(self, failure: Failure | None) -> None:
        exchange = self._exchange
        if failure is None or self._call.aborted:
            super().ended(failure)
            return
        exchange.usage = exchange.usage or self.estimate()
        error = failure.value
        exchange.status = getattr(error, "status", 502)
        exchange.error = str(error)
        self._request.unregisterProducer()
        self._request.loseConnection()
        self.done.callback(None)


class EventRelay(StreamRelay):
    """
    Relays an SSE stream in OpenAI's event format untouched, event run by event run, reading
    the usage of the events that carry one (``read_usage`` given the parsed event).
    """

    def __init__(self, reactor: Any, settings: UpstreamSettings, request: Any,
                 exchange: Exchange, call: UpstreamCall, read_usage: UsageReader,
                 request_size: int) -> None:
        super().__init__(reactor, settings, request, exchange, call, stream_error_event)
        self._read_usage = read_usage
        self._request_size = request_size
        self._splitter = EventSplitter()

    def received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange.first_byte is None:
            exchange.first_byte = self._reactor.seconds()
        run = self._splitter.feed(data)
        if not run:
            return
        if b'"usage"' in run:
            for event in events(run):
                payload = data_of(event)
                if b'"usage"' in payload:
                    usage = self._read_usage(_loads(payload), exchange.usage)
                    if usage is not None:
                        exchange.usage = usage
        self._request.write(run)

    def tail(self) -> bytes:
        return self._splitter.pending

    def estimate(self) -> Usage:
        return Usage(input_tokens=estimate_tokens(self._request_size), estimated=True)

    def ended(self, failure: Failure | None) -> None:
        if failure is not None and not self._call.aborted and self._exchange.usage is None:
            self._exchange.usage = self.estimate()
        super().ended(failure)


def usage_reader(read: Callable[[Any], Usage | None]) -> UsageReader:
    """A `UsageReader` for answers whose ``usage`` member ``read`` reads; the last one wins."""

    def reader(answer: Any, seen: Usage | None) -> Usage | None:
        if not isinstance(answer, dict):
            return None
        return read(answer.get("usage"))

    return reader

