"""
The upstream HTTP/1.1 client: an ``IAgent`` whose responses are parsed by httptools (llhttp,
the C parser uvicorn uses), over its own pool of persistent connections.

Twisted's ``Agent`` spends most of a proxied call's client-side CPU in its pure-Python
parser, its request/response state machine and the Deferreds between them.  This agent keeps
the same interfaces (``IAgent``, ``IBodyProducer`` bodies, ``IResponse`` with
``deliverBody``, the same failure types) so `txgateway.upstream` and every body reader work
unchanged, and does less per call: one write for a request whose body is bytes, the head
built from cached parts, and the body bytes of one read handed to the reader at once (an SSE
stream sent as one HTTP chunk per event reaches the relay as one piece per read).

Rules kept from Twisted's client: connections are verified-TLS (``BrowserLikePolicyForHTTPS``)
or plain TCP through the standard endpoints, with Nagle off; a request is never sent again
behind the caller's back; a connection returns to the pool only once its response was read to
the end and both sides allow keep-alive; a body reader that stops the transport closes the
connection; cancelling the request's Deferred aborts it in whatever phase it is.

HTTP proxies from the environment (``HTTPS_PROXY``...) are not used: neither was the
``Agent`` this replaces.
"""

from __future__ import annotations

import re
from typing import Any

from httptools import HttpParserError, HttpResponseParser
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import WrongBodyLength  # Twisted exports it nowhere public
from twisted.web.client import (
    URI,
    BrowserLikePolicyForHTTPS,
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from txgateway.http import socket_of, write_now

#: Headers about the connection and the message's framing: the agent writes its own, and
#: (like Twisted's client) keeps the response's out of ``response.headers``.
CONNECTION_HEADERS = frozenset({
    b"connection", b"content-length", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"trailers", b"transfer-encoding", b"upgrade",
})
#: An absolute URL of visible ASCII (no space, CR or LF could reach the request line): its
#: origin, then its path and query; a fragment is dropped.
_URL = re.compile(rb"([A-Za-z][A-Za-z0-9+.-]*://[\x21-\x22\x24-\x2e\x30-\x3e\x40-\x7e]*)"
                  rb"([\x21-\x22\x24-\x7e]*)(?:#[\x21-\x7e]*)?")
_METHOD = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BODYLESS_STATUSES = frozenset({204, 304})
_VERSIONS = {"1.1": (b"HTTP", 1, 1), "1.0": (b"HTTP", 1, 0)}
#: The most read before a response's head is whole (Twisted's client allowed 16 kB a line):
#: an upstream that sends headers without end is cut off.
MAX_HEAD_BYTES = 1024 * 1024
#: Body bytes kept for a response whose reader is not there yet, before its connection is
#: paused: an answer left unread must not fill the memory.
KEPT_UNREAD = 256 * 1024
#: How every body read to its end ends: one instance, whose ``check`` is computed once.
_RESPONSE_DONE = Failure(ResponseDone())


@implementer(IBodyProducer)
class BytesProducer:
    """A request body already in memory: the agent sends it in the same write as the head."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IAgent)
class LeanAgent:
    """
    Sends requests over `ConnectionPool` connections, one request at a time per connection.
    ``tls_policy`` makes the TLS settings per host (Twisted's verifying policy unless told).
    """

    def __init__(self, reactor: Any, pool: ConnectionPool, connect_timeout: float,
                 tls_policy: IPolicyForHTTPS | None = None) -> None:
        self._reactor = reactor
        self._pool = pool
        self._connect_timeout = connect_timeout
        self._tls_policy = tls_policy or BrowserLikePolicyForHTTPS()
        self._origins: dict[bytes, _Origin] = {}

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: IBodyProducer | None = None) -> Deferred[IResponse]:
        match = _URL.fullmatch(uri)
        if match is None or _METHOD.fullmatch(method) is None:
            return fail(ValueError(f"not a valid request: {method!r} {uri!r}"))
        prefix, path = match.groups()
        origin = self._origins.get(prefix)
        if origin is None:
            try:
                origin = self._origins[prefix] = self._origin(prefix)
            except ValueError as error:
                return fail(error)
        if not path.startswith(b"/"):
            path = b"/" + path
        head = _request_head(method, path, origin.host, headers, bodyProducer)
        head_only = method == b"HEAD"
        connection = self._pool.take(origin.key)
        if connection is not None:
            return connection.request(head, bodyProducer, head_only)
        # Cancelling the returned Deferred cancels the connection attempt, or once connected
        # the request (a Deferred waiting on another forwards its cancellation).
        connecting: Deferred[Any] = origin.endpoint.connect(origin.factory)
        return connecting.addCallback(_Connection.request, head, bodyProducer, head_only)

    def _origin(self, prefix: bytes) -> _Origin:
        uri = URI.fromBytes(prefix)
        if uri.scheme not in (b"http", b"https") or not uri.host:
            raise ValueError(f"not an http(s) URL: {prefix!r}")
        host = uri.host.decode("ascii")
        endpoint: Any = HostnameEndpoint(self._reactor, host, uri.port,
                                         timeout=self._connect_timeout)
        default_port = 443 if uri.scheme == b"https" else 80
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls_policy.creatorForNetloc(uri.host, uri.port),
                                     endpoint)
        host_header = uri.host if uri.port == default_port else b"%s:%d" % (uri.host, uri.port)
        if b":" in uri.host:  # an IPv6 literal
            host_header = prefix.split(b"://", 1)[1]
        key = (uri.scheme, uri.host, uri.port)
        return _Origin(key, host_header, endpoint, _ConnectionFactory(self._pool, key))


class _Origin:
    """What requests to one (scheme, host, port) share: their pool key, Host and endpoint."""

    __slots__ = ("key", "host", "endpoint", "factory")

    def __init__(self, key: tuple[bytes, bytes, int], host: bytes, endpoint: Any,
                 factory: Factory) -> None:
        self.key, self.host, self.endpoint, self.factory = key, host, endpoint, factory


def _request_head(method: bytes, path: bytes, host: bytes, headers: Headers | None,
                  body: Any) -> bytes:
    """The request line and headers: the caller's, with the Host and framing the agent owns."""
    lines = [method, b" ", path, b" HTTP/1.1\r\n"]
    has_host = False
    if headers is not None:
        for name, values in headers.getAllRawHeaders():
            lower = name.lower()
            if lower in CONNECTION_HEADERS:
                continue
            if lower == b"host":
                has_host = True
            for value in values:
                lines += (name, b": ", value, b"\r\n")
    if not has_host:
        lines += (b"Host: ", host, b"\r\n")
    if body is None:
        if method in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"Content-Length: 0\r\n")
    elif body.length is UNKNOWN_LENGTH:
        lines.append(b"Transfer-Encoding: chunked\r\n")
    else:
        lines.append(b"Content-Length: %d\r\n" % body.length)
    lines.append(b"\r\n")
    return b"".join(lines)


class ConnectionPool:
    """
    Idle persistent connections per (scheme, host, port), the most recent first; at most
    ``max_idle_per_host`` kept per host (the oldest closed beyond).  A connection idle for
    longer than ``idle_expiry`` seconds is closed rather than used: a NAT or load balancer
    may have dropped it without a word, and a request sent on it would wait in vain.
    """

    def __init__(self, max_idle_per_host: int, clock: Any, idle_expiry: float = 240.0) -> None:
        self.max_idle_per_host = max_idle_per_host
        self.idle_expiry = idle_expiry
        self._clock = clock
        self._idle: dict[tuple[bytes, bytes, int], list[_Connection]] = {}

    def take(self, key: tuple[bytes, bytes, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if idle:
            connection = idle.pop()
            connection.pooled = False
            if self._clock.seconds() - connection.idle_since < self.idle_expiry:
                return connection
            for expired in [connection, *idle]:  # the others have waited even longer
                expired.pooled = False
                expired.transport.loseConnection()
            idle.clear()
        return None

    def put(self, connection: _Connection) -> None:
        idle = self._idle.setdefault(connection.key, [])
        idle.append(connection)
        connection.pooled = True
        connection.idle_since = self._clock.seconds()
        if len(idle) > self.max_idle_per_host:
            oldest = idle.pop(0)
            oldest.pooled = False
            oldest.transport.loseConnection()

    def forget(self, connection: _Connection) -> None:
        """A pooled connection closed (by the server, or by `closeCachedConnections`)."""
        connection.pooled = False
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def closeCachedConnections(self) -> Deferred[Any]:
        """Close every idle connection; fires once all are closed."""
        closing = []
        for idle in self._idle.values():
            for connection in list(idle):
                closing.append(connection.closed())
                connection.transport.loseConnection()
        self._idle.clear()
        return DeferredList(closing, consumeErrors=True)


class _ConnectionFactory(Factory):
    noisy = False  # no "Starting factory" log line per connection

    def __init__(self, pool: ConnectionPool, key: tuple[bytes, bytes, int]) -> None:
        self._pool = pool
        self._key = key

    def buildProtocol(self, addr: Any) -> _Connection:
        return _Connection(self._pool, self._key)


class _Connection(Protocol):
    """
    One upstream connection: writes a request (`request`), parses its response with llhttp
    and hands the response and its body over; back to the pool when both are done.
    """

    transport: Any

    def __init__(self, pool: ConnectionPool, key: tuple[bytes, bytes, int]) -> None:
        self.key = key
        self.pooled = False
        self.idle_since = 0.0
        self._pool = pool
        self._parser = HttpResponseParser(self)
        self._waiting: Deferred[IResponse] | None = None  # until the response's head is in
        self._sending: _RequestBody | None = None  # a body producer still writing
        self._response: _Response | None = None  # whose body is being read
        self._head_only = False
        self._informational = False
        self._message = False  # response bytes arrived for the current request
        self._broken = False  # never reused: unsolicited bytes, a HEAD, a stopped body
        self._ready: _Response | None = None
        self._body: list[bytes] = []
        self._complete = False
        self._keep_alive = False
        self._head_size = 0  # bytes read before the response's head was whole
        self._paused = False
        self._lost = False
        self._closed_waiters: list[Deferred[None]] = []
        # The response head being parsed.
        self._phrase = b""
        self._headers = Headers()
        self._length: Any = UNKNOWN_LENGTH
        self._chunked = False

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        self._socket = socket_of(self.transport)

    def closed(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self._lost:
            waiter.callback(None)
        else:
            self._closed_waiters.append(waiter)
        return waiter

    # Sending.

    def request(self, head: bytes, body: Any, head_only: bool) -> Deferred[IResponse]:
        waiting: Deferred[IResponse] = Deferred(self._cancel)
        if self._lost:
            waiting.errback(ResponseNeverReceived([Failure(ConnectionDone())]))
            return waiting
        self._waiting = waiting
        self._head_only = head_only
        self._message = self._complete = False
        self._head_size = 0
        if body is None:
            self._write_now(head)
        elif type(body) is BytesProducer:
            self._write_now(head + body.body)
        else:
            self.transport.write(head)
            self._sending = _RequestBody(self, body)
            self._sending.start()
        return waiting

    def _write_now(self, data: bytes) -> None:
        write_now(self.transport, self._socket, data)

    def _cancel(self, waiting: Deferred[IResponse]) -> None:
        """The caller gave up before the response's head (it gets a CancelledError)."""
        self._waiting = None
        self._broken = True
        self._stop_sending()
        self.transport.abortConnection()

    def _stop_sending(self) -> None:
        sending, self._sending = self._sending, None
        if sending is not None:
            sending.stop()

    def _sent(self) -> None:
        """The request body is all written."""
        self._sending = None

    def _sending_failed(self, reason: Failure) -> None:
        """The body producer failed: the request cannot be completed."""
        self._sending = None
        self._broken = True
        self.transport.abortConnection()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(RequestGenerationFailed([reason]))

    # Receiving.

    def dataReceived(self, data: bytes) -> None:
        if self._waiting is None and self._response is None:
            # Bytes nobody asked for (on an idle connection, or after a response): the
            # connection is out of step, and closed.
            self._broken = True
            self.transport.abortConnection()
            return
        self._message = True
        if self._response is None:
            self._head_size += len(data)
            if self._head_size > MAX_HEAD_BYTES:
                self._malformed(Failure(HttpParserError(
                    f"the response head exceeds {MAX_HEAD_BYTES} bytes")))
                return
        try:
            self._parser.feed_data(data)
        except HttpParserError as error:
            self._malformed(Failure(error))
            return
        if self._ready is not None:
            response, self._ready = self._ready, None
            waiting, self._waiting = self._waiting, None
            self._response = response
            if waiting is not None:
                waiting.callback(response)
        if self._body:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            self._body.clear()
            if self._response is not None:
                self._response._received(body)
        if self._complete and self._response is not None:
            self._finished()

    def _finished(self) -> None:
        response, self._response = self._response, None
        assert response is not None
        if self._broken or self._sending is not None or not self._keep_alive:
            self._broken = True
            if self._sending is None:
                self.transport.loseConnection()
            else:  # an answer before the whole request: stop sending, then close
                self._stop_sending()
                self.transport.abortConnection()
        else:
            if self._paused:
                self._paused = False
                self.transport.resumeProducing()
            self._pool.put(self)
        response._ended(_RESPONSE_DONE)

    def _malformed(self, reason: Failure) -> None:
        self._broken = True
        self._stop_sending()
        self.transport.abortConnection()
        waiting, self._waiting = self._waiting, None
        response, self._response = self._response, None
        if waiting is not None:
            waiting.errback(ResponseFailed([reason]))
        elif response is not None:
            response._ended(Failure(ResponseFailed([reason])))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._lost = True
        if self.pooled:
            self._pool.forget(self)
        sending = self._sending
        self._stop_sending()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            if sending is not None:
                waiting.errback(RequestTransmissionFailed([reason]))
            elif self._message:
                waiting.errback(ResponseFailed([reason]))
            else:
                waiting.errback(ResponseNeverReceived([reason]))
        response, self._response = self._response, None
        if response is not None:
            close_delimited = (not self._chunked and self._length is UNKNOWN_LENGTH
                               and not self._head_only)
            if close_delimited and reason.check(ConnectionDone) and not response.stopped:
                response._ended(Failure(PotentialDataLoss()))
            else:
                response._ended(Failure(ResponseFailed([reason])))
        waiters, self._closed_waiters = self._closed_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # The body reader's transport (through `_Response`).

    def pause(self) -> None:
        self._paused = True
        self.transport.pauseProducing()

    def resume(self) -> None:
        self._paused = False
        self.transport.resumeProducing()

    def abort(self) -> None:
        """The body's reader wants no more: the connection is closed, never reused."""
        self._broken = True
        self._stop_sending()
        self.transport.abortConnection()

    # httptools callbacks.

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request
            self._broken = True
        self._phrase = b""
        self._headers = Headers()
        self._length = UNKNOWN_LENGTH
        self._chunked = False

    def on_status(self, status: bytes) -> None:
        self._phrase += status

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower in CONNECTION_HEADERS:
            if lower == b"content-length":
                self._length = int(value)
            elif lower == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
        else:
            self._headers.addRawHeader(name, value)

    def on_headers_complete(self) -> None:
        code = self._parser.get_status_code()
        if code < 200:
            self._informational = True  # 100 Continue and the like: not the answer
            return
        if self._chunked:
            self._length = UNKNOWN_LENGTH
        elif code in _BODYLESS_STATUSES or self._head_only:
            self._length = 0
        version = _VERSIONS.get(self._parser.get_http_version(), (b"HTTP", 1, 1))
        self._ready = _Response(self, version, code, self._phrase, self._headers, self._length)
        if self._head_only:
            # llhttp cannot be told that this answer has no body: the message ends here,
            # and the connection is not reused (its parser expects a body).
            self._broken = True
            self._complete = True

    def on_body(self, body: bytes) -> None:
        if not self._complete:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
        elif not self._complete:
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()


class _RequestBody:
    """
    Writes an ``IBodyProducer``'s body after the head: as is with a known length (checked),
    chunked without; the connection's write buffer pauses and resumes the producer.
    """

    def __init__(self, connection: _Connection, producer: Any) -> None:
        self._connection = connection
        self._producer = producer
        self._transport = connection.transport
        self._chunked = producer.length is UNKNOWN_LENGTH
        self._remaining: int = 0 if self._chunked else producer.length
        self._stopped = False

    def start(self) -> None:
        self._transport.registerProducer(self._producer, True)
        try:
            producing = self._producer.startProducing(self)
        except Exception:
            producing = Deferred()
            producing.errback()
        producing.addCallbacks(self._done, self._failed)

    def write(self, data: bytes) -> None:
        if self._stopped or not data:
            return
        if self._chunked:
            self._transport.write(b"%x\r\n%s\r\n" % (len(data), data))
            return
        self._remaining -= len(data)
        if self._remaining < 0:
            self.stop()
            self._connection._sending_failed(Failure(WrongBodyLength(
                "the body producer wrote more than its length")))
        else:
            self._transport.write(data)

    def stop(self) -> None:
        """The request will not be completed (the connection closes): stop the producer."""
        if not self._stopped:
            self._stopped = True
            self._transport.unregisterProducer()
            self._producer.stopProducing()

    def _done(self, _: Any) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._transport.unregisterProducer()
        if self._chunked:
            self._transport.write(b"0\r\n\r\n")
        elif self._remaining:
            self._connection._sending_failed(Failure(WrongBodyLength(
                "the body producer wrote less than its length")))
            return
        self._connection._sent()

    def _failed(self, reason: Failure) -> None:
        if not self._stopped:
            self._stopped = True
            self._transport.unregisterProducer()
            self._connection._sending_failed(reason)


@implementer(IResponse)
class _Response:
    """
    A response whose head is in: ``deliverBody`` hands its body to a protocol (the bytes
    that came before are kept for it), and this object is that protocol's transport: pausing,
    resuming, or stopping (closing) the connection while the body lasts.
    """

    request = None
    previousResponse = None

    def __init__(self, connection: _Connection, version: tuple[bytes, int, int], code: int,
                 phrase: bytes, headers: Headers, length: Any) -> None:
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self.stopped = False
        self._connection: _Connection | None = connection  # until the body is over
        self._protocol: Any = None
        self._kept: list[bytes] = []
        self._kept_size = 0
        self._holding = False  # the connection paused: too much kept unread
        self._end: Failure | None = None

    def deliverBody(self, protocol: Any) -> None:
        if self._protocol is not None:
            raise RuntimeError("a response body is delivered once")
        self._protocol = protocol
        protocol.makeConnection(self)
        if self._holding and self._connection is not None:
            self._holding = False
            self._connection.resume()  # (read on a later turn: the protocol may pause it)
        kept, self._kept = self._kept, []
        for data in kept:
            if not self.stopped:
                protocol.dataReceived(data)
        if self._end is not None:
            protocol.connectionLost(self._end)

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response

    def _received(self, data: bytes) -> None:
        if self.stopped:
            return
        if self._protocol is None:
            self._kept.append(data)
            self._kept_size += len(data)
            if self._kept_size > KEPT_UNREAD and not self._holding and self._connection:
                self._holding = True
                self._connection.pause()
        else:
            self._protocol.dataReceived(data)

    def _ended(self, reason: Failure) -> None:
        self._connection = None
        if self._protocol is None:
            self._end = reason
        else:
            self._protocol.connectionLost(reason)

    # The body protocol's transport.

    def pauseProducing(self) -> None:
        if self._connection is not None:
            self._connection.pause()

    def resumeProducing(self) -> None:
        if self._connection is not None:
            self._connection.resume()

    def stopProducing(self) -> None:
        if self._connection is not None and not self.stopped:
            self.stopped = True
            self._connection.abort()

    def loseConnection(self) -> None:
        self.stopProducing()

    abortConnection = loseConnection


def lean_agent(reactor: Any, max_idle_per_host: int,
               connect_timeout: float) -> tuple[LeanAgent, ConnectionPool]:
    """An agent and the pool it keeps its connections in."""
    pool = ConnectionPool(max_idle_per_host, reactor)
    return LeanAgent(reactor, pool, connect_timeout), pool
