"""
Relaying an upstream stream to the client as it arrives, whatever the two dialects.

The relay is the upstream body's reader and the push producer the client's connection pauses
(backpressure); a stall or break ends the stream with an error event in the caller's dialect,
and a client that leaves aborts the upstream (`UpstreamCall.abort`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txgateway.accounting import Exchange
from txgateway.config import UpstreamSettings
from txgateway.streams import EventTooLarge
from txgateway.upstream import TimedBody, UpstreamCall, UpstreamError
from txgateway.usage import Usage, estimate_tokens

#: nginx's status for "the client closed the connection before the answer was complete".
CLIENT_CLOSED = 499

ErrorEvent = Callable[[int, str, str], bytes]
"""Makes the caller-dialect error event from (status, message, code)."""


def start_event_stream(request: Any) -> None:
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"x-accel-buffering", b"no")


class StreamRelay(TimedBody):
    """The relay's frame: subclasses say what to write (`received`) and how to end (`tail`)."""

    def __init__(self, reactor: Any, settings: UpstreamSettings, request: Any,
                 exchange: Exchange, call: UpstreamCall, error_event: ErrorEvent) -> None:
        super().__init__(reactor, settings)
        self._request = request
        self._exchange = exchange
        self._call = call
        self._error_event = error_event
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self._call.aborted:
            self._request.registerProducer(self, True)

    def stopProducing(self) -> None:
        # The client's connection is gone (it may say so before the request's notifyFinish
        # does): the call is aborted, so that the end is counted as the client's, 499.
        self._call.abort()

    def tail(self) -> bytes:
        """What to write when the upstream body ended cleanly."""
        return b""

    def estimate(self) -> Usage:
        """The usage to record when the upstream reported none (a stream cut short)."""
        raise NotImplementedError

    def ended(self, failure: Failure | None) -> None:
        exchange = self._exchange
        if exchange.usage is None:
            exchange.usage = self.estimate()
        if self._call.aborted:
            exchange.status = CLIENT_CLOSED
            exchange.error = "the client disconnected"
        else:
            self._request.unregisterProducer()
            if failure is None:
                self._request.write(self.tail())
            else:
                error = failure.value
                status = getattr(error, "status", 502)
                exchange.status = status
                exchange.error = str(error)
                self._request.write(self._error_event(
                    status, f"the upstream stream failed: {error}",
                    getattr(error, "code", "upstream_error"),
                ))
            self._request.finish()
        self.done.callback(None)


class TranslatedStreamRelay(StreamRelay):
    """
    Relays a stream through a translator (``feed(bytes) -> bytes``, with ``usage``,
    ``chunks`` and ``error``): the upstream's dialect in, the caller's out.
    """

    def __init__(self, reactor: Any, settings: UpstreamSettings, request: Any,
                 exchange: Exchange, call: UpstreamCall, error_event: ErrorEvent,
                 translator: Any, request_size: int) -> None:
        super().__init__(reactor, settings, request, exchange, call, error_event)
        self._translator = translator
        self._request_size = request_size

    def received(self, data: bytes) -> None:
        exchange = self._exchange
        if exchange.first_byte is None:
            exchange.first_byte = self._reactor.seconds()
        translator = self._translator
        try:
            out = translator.feed(data)
        except EventTooLarge:
            raise  # said as such by `TimedBody`
        except (ValueError, TypeError, KeyError, AttributeError):
            self.fail(UpstreamError("the upstream sent an event that could not be read"))
            return
        if translator.usage is not None:
            exchange.usage = translator.usage
        if translator.error is not None and exchange.error is None:
            exchange.status = translator.error[0]
            exchange.error = translator.error[1]
        if out:
            self._request.write(out)

    def tail(self) -> bytes:
        return self._translator.finish()

    def ended(self, failure: Failure | None) -> None:
        if self._call.aborted or failure is not None or self._exchange.error is not None:
            # Cut short: a usage reported so far is partial (Anthropic's message_start gives
            # the input and one output token), so the output is estimated.
            self._exchange.usage = self.estimate()
        super().ended(failure)

    def estimate(self) -> Usage:
        # One token per content chunk, the first (the role alone) aside; the input as the
        # upstream reported it, when it did.
        output = max(self._translator.chunks - 1, 0)
        reported = self._translator.usage
        if reported is None:
            return Usage(input_tokens=estimate_tokens(self._request_size),
                         output_tokens=output, estimated=True)
        return attrs.evolve(reported, output_tokens=max(reported.output_tokens, output),
                            estimated=True)
