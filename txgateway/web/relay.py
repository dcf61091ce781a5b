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
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from txgateway.accounting import Tally
from txgateway.streams import EventTooLarge
from txgateway.upstream import TimedBody, UpstreamCall, UpstreamError
from txgateway.usage import Usage, estimate_tokens

log = Logger()

#: nginx's status for "the client closed the connection before the answer was complete".
CLIENT_CLOSED = 499

ErrorEvent = Callable[[int, str, str], bytes]
"""Makes the caller-dialect error event from (status, message, code)."""


#: Response headers of the upstream's that describe the body and are passed to the caller.
PASSED_HEADERS = (b"content-type", b"content-disposition")


def start_event_stream(request: Any) -> None:
    request.setResponseCode(200)
    request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"x-accel-buffering", b"no")


def start_relayed(request: Any, response: Any) -> None:
    """Start a 200 whose body is relayed as it comes: the upstream's content headers kept."""
    request.setResponseCode(200)
    for name in PASSED_HEADERS:
        value = response.headers.getRawHeaders(name)
        if value:
            request.setHeader(name, value[0])
    request.setHeader(b"cache-control", b"no-cache")
    request.setHeader(b"x-accel-buffering", b"no")


class NotStored(UpstreamError):
    """What a stream ends with when what it made (a stored response) could not be stored."""

    status = 500
    code = "store_failed"


class ITranscoder(Interface):
    """
    What a relay writes of the upstream's stream: its bytes in, the caller's dialect out (the
    same bytes, whole events, when the dialects match), with the usage seen on the way.
    """

    usage = Attribute("The `Usage` the stream reported so far, or None.")
    error = Attribute("(status, message) of an error event the upstream sent, or None.")
    chunks = Attribute("Chunks written: one token each after the first, when cut short.")
    complete = Attribute(
        "True once the stream's last event has gone to the caller (chat's ``data: [DONE]``): "
        "a caller that leaves after it had the whole answer, as SDKs do before the body's "
        "own end arrives.")

    def feed(data: bytes) -> bytes:  # noqa: N805 (zope interface)
        """What to write of ``data`` (may be nothing until an event is whole)."""

    def finish() -> bytes:  # noqa: N805
        """What to write once the upstream's stream ended cleanly."""


class Relay(TimedBody):
    """
    Relays an upstream stream through a ``transcoder`` (`ITranscoder`), which is also its
    meter: the usage it reports, or when the stream is cut short an estimate from what it
    wrote (none without a ``request_size``: a file's bytes are no tokens).  ``save``, when
    given, runs on a clean end before the end reaches the client (so that a follow-up the
    client sends at once finds what it stored).  A stream that breaks ends with
    ``error_event``; a binary body (no ``error_event``) drops the client's connection
    instead, so that it cannot take a truncated file for a whole one.  What it meters goes
    into the runner's ``tally``.
    """

    def __init__(self, gateway: Any, request: Any, tally: Tally,
                 call: UpstreamCall, error_event: ErrorEvent | None, transcoder: Any,
                 request_size: int | None,
                 save: Callable[[], Deferred[Any] | None] | None = None) -> None:
        super().__init__(gateway.reactor, gateway.config.upstream)
        self._redactor = gateway.redactor
        self._request = request
        self._tally = tally
        self._call = call
        self._error_event = error_event
        self._transcoder = transcoder
        self._request_size = request_size
        self._save = save
        self.done: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        if not self._call.aborted:
            self._request.registerProducer(self, True)

    def stopProducing(self) -> None:
        # The client's connection is gone (it may say so before the request's notifyFinish
        # does): the call is aborted, so that the end is counted as the client's, 499.
        self._call.abort()

    def received(self, data: bytes) -> None:
        tally = self._tally
        if tally.first_byte is None:
            tally.first_byte = self._reactor.seconds()
        transcoder = self._transcoder
        try:
            out = transcoder.feed(data)
        except EventTooLarge:
            raise  # said as such by `TimedBody`
        except (ValueError, TypeError, KeyError, AttributeError):
            self.fail(UpstreamError("the upstream sent an event that could not be read"))
            return
        if transcoder.usage is not None:
            tally.usage = transcoder.usage
        if transcoder.error is not None:
            # An error event the upstream sent may quote its credentials: scrubbed from here.
            if tally.error is None:
                tally.status = transcoder.error[0]
                tally.error = self._redactor.text(transcoder.error[1])
            out = self._redactor.bytes(out)
        if out:
            self._request.write(out)

    def ended(self, failure: Failure | None) -> None:
        if failure is not None or self._call.aborted:
            self._end(failure, b"")
            return
        tail = self._transcoder.finish()
        if self._transcoder.usage is not None:
            self._tally.usage = self._transcoder.usage
        if self._save is None:
            self._end(None, tail)
            return

        def not_stored(reason: Failure) -> None:
            # The client would otherwise ask for what is not there: its stream ends with an
            # error event after what it was shown.
            log.failure("storing what a stream made failed", reason)
            self._request.write(tail)
            self._end(Failure(NotStored("what the stream made could not be stored")), b"")

        maybeDeferred(self._save).addCallbacks(lambda _: self._end(None, tail), not_stored)

    def _end(self, failure: Failure | None, tail: bytes) -> None:
        tally = self._tally
        aborted = self._call.aborted
        # A caller that left once the last event was written had the whole answer.
        whole = aborted and self._transcoder.complete
        if self._request_size is not None and (tally.usage is None or not whole and (
                aborted or failure is not None or tally.error is not None)):
            # Cut short: a usage reported so far is partial (Anthropic's message_start gives
            # the input and one output token), so the output is estimated.
            tally.usage = self.estimate(self._request_size)
        if aborted:
            if not whole:
                tally.status = CLIENT_CLOSED
                tally.error = "the client disconnected"
            self.done.callback(None)
            return
        self._request.unregisterProducer()
        if failure is None:
            self._request.write(tail)
            self._request.finish()
            self.done.callback(None)
            return
        error = failure.value
        status = error.status if isinstance(error, UpstreamError) else 502
        tally.status, tally.error = status, str(error) or type(error).__name__
        if self._error_event is None:
            self._request.loseConnection()
        else:
            self._request.write(self._error_event(
                status, f"the upstream stream failed: {error}",
                error.code if isinstance(error, UpstreamError) else "upstream_error"))
            self._request.finish()
        self.done.callback(None)

    def estimate(self, request_size: int) -> Usage:
        # One token per chunk, the first (the role alone) aside; the input as the upstream
        # reported it, when it did.
        output = max(self._transcoder.chunks - 1, 0)
        reported = self._transcoder.usage
        if reported is None:
            return Usage(input_tokens=estimate_tokens(request_size),
                         output_tokens=output, estimated=True)
        return attrs.evolve(reported, output_tokens=max(reported.output_tokens, output),
                            estimated=True)


class Bytes:
    """
    The transcoder (`ITranscoder`) of a body relayed as it came: a binary one as it is, or
    the base of a meter that reads it on the side (its ``usage`` found on the way).
    """

    usage: Usage | None = None
    error: tuple[int, str] | None = None
    chunks = 0
    #: A body relayed as it came has no last event to tell a whole answer by.
    complete = False

    def feed(self, data: bytes) -> bytes:
        return data

    def finish(self) -> bytes:
        return b""
