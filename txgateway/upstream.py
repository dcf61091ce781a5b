"""
Calling upstream servers: a pooled agent, layered timeouts and cancellation.

The client is `txgateway.http.client`'s agent (Twisted's ``IAgent`` over httptools' parser,
with its own pool).  treq's ``HTTPClient`` would add what a gateway must not have on its hot
path: a cookie jar shared by every upstream (one tenant's ``Set-Cookie`` would be replayed to
the next), redirect following, gzip decoding that rewrites the body, URL re-parsing through
hyperlink and a body producer that waits a reactor turn before it writes.

treq's ``timeout=`` only covers the wait for the response headers, and cancelling a body read
does not close the connection; `UpstreamCall` covers each phase: connect (the agent), first
byte (headers), idle (silence inside the body), and an `abort` that closes the upstream
connection at once whatever phase the call is in.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import (
    ConnectError,
    ConnectingCancelledError,
    DNSLookupError,
)
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface import implementer

from txgateway.config import UpstreamSettings
from txgateway.http.client import BytesProducer, ConnectionPool, LeanAgent, lean_agent
from txgateway.providers import UpstreamRequest
from txgateway.streams import EventTooLarge


class UpstreamError(Exception):
    """The upstream could not give a complete answer; ``status`` is what the caller gets."""

    status = 502
    code = "upstream_error"


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamBroken(UpstreamError):
    code = "upstream_connection_lost"


class UpstreamTooLarge(UpstreamError):
    code = "upstream_response_too_large"


class UpstreamRefusedAttempt(UpstreamError):
    """
    The upstream answered 429 or 5xx while another attempt could still be made: the answer is
    dropped and the call falls back (``status`` and ``retry_after`` say what it was).
    """

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"the upstream answered {status}")
        self.status = status
        self.retry_after = retry_after


#: Statuses worth another attempt elsewhere: rate limited, or the server failed.
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504, 529})

#: Failures before any answer, worth another attempt.
RETRYABLE_ERRORS = (UpstreamRefusedAttempt, UpstreamUnreachable, UpstreamTimeout,
                    UpstreamBroken)


def pooled_agent(reactor: Any, settings: UpstreamSettings) -> tuple[LeanAgent, ConnectionPool]:
    """The shared HTTP agent: persistent connections per (scheme, host, port)."""
    return lean_agent(reactor, settings.max_idle_connections_per_host, settings.connect_timeout)


class UpstreamCall:
    """
    One request to an upstream: send it, then read or relay its body, abortable throughout.

    ``abort()`` is what a client disconnect calls: before the headers it cancels the request,
    after them it closes the body's connection (so it is never returned to the pool).
    """

    def __init__(self, reactor: Any, settings: UpstreamSettings) -> None:
        self._reactor = reactor
        self._settings = settings
        self._waiting: Deferred[Any] | None = None
        self._body: TimedBody | None = None
        self.aborted = False
        #: Set while another attempt may follow: a 429 or 5xx answer then fails `send` with
        #: `UpstreamRefusedAttempt` instead of being returned.
        self.may_fall_back = False

    def send(self, agent: Any, request: UpstreamRequest) -> Deferred[IResponse]:
        """The response, once its headers are in; fails with an `UpstreamError`."""
        waiting = agent.request(
            request.method, request.url, request.headers, _producer(request.body)
        )
        timer = self._reactor.callLater(self._settings.first_byte_timeout, waiting.cancel)
        self._waiting = waiting

        def settled(result: Any) -> Any:
            self._waiting = None
            if timer.active():
                timer.cancel()
                if isinstance(result, Failure):
                    return _classify(result)
            elif isinstance(result, Failure):
                return Failure(UpstreamTimeout("the upstream did not answer in time"))
            if self.may_fall_back and result.code in RETRYABLE_STATUSES:
                return Failure(_dropped(result))
            return result

        return waiting.addBoth(settled)

    def read(self, response: IResponse) -> Deferred[bytes]:
        """The whole body, within the idle timeout and the size limit."""
        collector = BodyCollector(self._reactor, self._settings)
        if response.length is not UNKNOWN_LENGTH and response.length > collector.limit:
            collector.fail(collector.too_large())  # said at once, not read first
        self.deliver(response, collector)
        return collector.finished

    def deliver(self, response: IResponse, body: TimedBody) -> None:
        """Hand the body to ``body`` (a `TimedBody`), keeping it abortable."""
        self._body = body
        if self.aborted:
            body.abort()
        response.deliverBody(body)

    def abort(self) -> None:
        self.aborted = True
        if self._waiting is not None:
            self._waiting.cancel()
        elif self._body is not None:
            self._body.abort()


def _dropped(response: IResponse) -> UpstreamRefusedAttempt:
    """Read and drop a refused answer's body (so its connection is reused); say why."""
    response.deliverBody(Protocol())
    retry_after = response.headers.getRawHeaders(b"retry-after", [b""])[0]
    try:
        seconds: float | None = float(retry_after)
    except ValueError:
        seconds = None
    return UpstreamRefusedAttempt(response.code, seconds)


def _producer(body: Any) -> Any:
    """An `UpstreamRequest`'s body: bytes, an ``IBodyProducer`` (streamed), or None (none)."""
    return BytesProducer(body) if isinstance(body, bytes) else body


def _classify(failure: Failure) -> Failure:
    if failure.check(UpstreamError, CancelledError):
        return failure
    if failure.check(ConnectingCancelledError):
        return Failure(CancelledError())
    if failure.check(ConnectTimeout):
        return Failure(UpstreamTimeout("connecting to the upstream timed out"))
    if failure.check(DNSLookupError, ConnectError):
        return Failure(UpstreamUnreachable(f"cannot connect to the upstream: {failure.value}"))
    if failure.check(ResponseNeverReceived, ResponseFailed):
        return Failure(UpstreamBroken("the upstream closed the connection without answering"))
    if failure.check(RequestGenerationFailed):
        # A body streamed as it arrives failed (`txgateway.web.upload`): its error says why
        # (the client left, its body was refused, the upstream stopped taking it).
        return _classify(failure.value.reasons[0])
    if failure.check(RequestTransmissionFailed):
        return Failure(UpstreamBroken("the upstream connection broke while the request was sent"))
    return failure


@implementer(IPushProducer)
class TimedBody(Protocol):
    """
    A response body reader with an idle timer: silence longer than the idle timeout, or an
    `abort`, closes the upstream connection.  Subclasses implement `received` and `ended`.

    It is also the push producer a relay registers with its client: pausing it pauses the
    upstream connection and the idle timer with it, since silence we asked for is no stall.
    """

    transport: Any

    def __init__(self, reactor: Any, settings: UpstreamSettings) -> None:
        self._reactor = reactor
        self._idle_timeout = settings.idle_timeout
        self._timer: Any = None
        self._last_data = 0.0
        self._stop_reason: UpstreamError | CancelledError | None = None

    def connectionMade(self) -> None:
        self._start_timer()
        if self._stop_reason is not None:
            self.transport.stopProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._stop_reason is not None:
            return
        # A time stamp per read; the timer looks at it when it fires (cheaper than moving it).
        self._last_data = self._reactor.seconds()
        try:
            self.received(data)
        except EventTooLarge as error:
            self.fail(UpstreamTooLarge(str(error)))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        ended: Failure | None = reason
        if self._stop_reason is not None:
            ended = Failure(self._stop_reason)
        elif isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            ended = None
        elif not isinstance(reason.value, UpstreamError):
            ended = Failure(UpstreamBroken("the upstream connection broke mid-response"))
        self.ended(ended)

    def pauseProducing(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if self._stop_reason is None and self._timer is None:
            self._start_timer()
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abort()

    def _start_timer(self) -> None:
        self._last_data = self._reactor.seconds()
        self._timer = self._reactor.callLater(self._idle_timeout, self._idle)

    def _idle(self) -> None:
        quiet = self._reactor.seconds() - self._last_data
        if quiet < self._idle_timeout:  # data came since: wait for the rest of the timeout
            self._timer = self._reactor.callLater(self._idle_timeout - quiet, self._idle)
        else:
            self._stop(UpstreamTimeout(f"the upstream sent nothing for {self._idle_timeout:g} s"))

    def abort(self) -> None:
        """The caller has gone: close the upstream connection."""
        self._stop(CancelledError())

    def fail(self, error: UpstreamError) -> None:
        self._stop(error)

    def _stop(self, reason: UpstreamError | CancelledError) -> None:
        if self._stop_reason is None:
            self._stop_reason = reason
            if self.transport is not None:
                self.transport.stopProducing()

    def received(self, data: bytes) -> None:
        raise NotImplementedError

    def ended(self, failure: Failure | None) -> None:
        """The body is over: ``failure`` is None when it ended cleanly."""
        raise NotImplementedError


class BodyCollector(TimedBody):
    """Collects a whole (non-streamed) body into ``finished``."""

    def __init__(self, reactor: Any, settings: UpstreamSettings) -> None:
        super().__init__(reactor, settings)
        self.limit = settings.max_response_bytes
        self._parts: list[bytes] = []
        self._size = 0
        self.finished: Deferred[bytes] = Deferred()

    def too_large(self) -> UpstreamTooLarge:
        return UpstreamTooLarge(f"the upstream answer exceeds the limit of {self.limit} bytes")

    def received(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.limit:
            self.fail(self.too_large())
        else:
            self._parts.append(data)

    def ended(self, failure: Failure | None) -> None:
        if failure is None:
            self.finished.callback(b"".join(self._parts))
        else:
            self.finished.errback(failure)
