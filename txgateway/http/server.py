"""
The HTTP/1.1 server: requests parsed by httptools (llhttp, the C parser uvicorn uses) inside
a Twisted ``Protocol``, rendered through the same twisted.web ``Resource`` tree, seen by the
endpoints through `txgateway.http.request.Request`.

twisted.web's ``HTTPChannel`` and ``Request`` cost four fifths of a proxied call's CPU in the
gateway; this protocol does what the gateway needs of them and no more:

- keep-alive and pipelining: requests are answered one at a time, in order; reading stops
  while answers are owed for requests already read;
- bodies by Content-Length or chunked, held whole up to ``max_body_bytes`` (else 413, the
  rest read and dropped, then the connection closed), or on the
  ``streamed_paths`` (`txgateway.web.upload`) rendered once the headers are in and fed to
  ``request.upload`` as they come; ``Expect: 100-continue`` answered when the body is wanted;
- a head over ``max_head_bytes`` is answered 431, a malformed request (an absurd chunk size
  too) 400, and the connection closed at once, after the answers owed before it;
- slowloris: a head must be whole within ``header_timeout`` seconds of its first byte, a
  body must not stall for ``body_timeout``, an idle keep-alive connection is closed after
  ``idle_timeout`` (one timer for all connections, ticking each ``sweep_interval``);
- a WebSocket upgrade (any ``Upgrade`` request, and any request to a ``WebSocketResource``
  such as ``/v1/realtime``) is handed, with the bytes already read, to twisted.web's
  ``HTTPChannel`` and `GatewaySite`, so that Autobahn shakes hands (or refuses) as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from io import BytesIO
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.http import datetimeToString
from twisted.web.resource import getChildForRequest
from twisted.web.server import NOT_DONE_YET

from txgateway.dialects.openai import error_body
from txgateway.http import StreamTransport, socket_of
from txgateway.http.request import Request
from txgateway.web.resource import endpoint_at
from txgateway.web.site import GatewaySite
from txgateway.web.upload import Upload, paths_of, streamed_paths

log = Logger()

_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: The headers of a request's body and connection, left out of a plain request handed over.
_BODY_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"expect"})


def _closing_answer(status: int, phrase: bytes, message: str, code: str,
                    body_of: Callable[..., bytes] = error_body) -> bytes:
    body = body_of(status, message, code)
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (status, phrase, len(body), body))


_BAD_REQUEST = (400, b"Bad Request", "The request is not valid HTTP/1.1.", "bad_request")
_HEAD_TOO_LARGE = (431, b"Request Header Fields Too Large",
                   "The request's headers are too large.", "request_header_fields_too_large")


class _HeadTooLarge(Exception):
    pass


class HTTPServerProtocol(Protocol):
    """One client connection (see the module's docstring)."""

    # Twisted declares an ``ITransport | None``: it is set before connectionMade, and more.
    transport: StreamTransport  # type: ignore[assignment]

    def __init__(self, factory: HTTPServer) -> None:
        self.factory = factory
        self._parser = HttpRequestParser(self)
        #: Requests read (whole, or their head on a streamed path), oldest first: the first
        #: is the one being answered.
        self._requests: deque[Request] = deque()
        self._reading: Request | None = None  # the request whose body is being read
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._raw: list[tuple[bytes, bytes]] = []
        self._parts: list[bytes] = []
        self._size = 0
        self._in_head = False
        self._began = False  # a message began in the data being parsed
        self._head_size = 0
        self._paused = False
        self._closing = False  # nothing more is read: the connection ends after the answers
        self._last: bytes | None = None  # written once the answers owed are, then close
        self._upgrade: Any = None  # what an upgrade was handed to (or will be)
        #: When the phase the timeout applies to began, and that timeout (None: none).
        self._since = 0.0
        self._timeout: float | None = None

    def connectionMade(self) -> None:
        self.socket = socket_of(self.transport)
        try:
            # Answers are written whole: Nagle's algorithm would only add latency.
            self.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):  # UNIX sockets have no Nagle
            pass
        self.factory.track(self)
        self._idle()

    def dataReceived(self, data: bytes) -> None:
        if self._upgrade is not None:
            if isinstance(self._upgrade, list):
                self._upgrade.append(data)
            else:
                self._upgrade.dataReceived(data)
            return
        if self._closing:
            return
        self._began = False
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self._upgrading(data[upgrade.args[0]:])
            return
        except HttpParserError as error:
            self._stop(_HEAD_TOO_LARGE if isinstance(error.__context__, _HeadTooLarge)
                       else _BAD_REQUEST)
            return
        if self._in_head:
            if not self._began:
                self._head_size += len(data)
            if self._head_size > self.factory.max_head_bytes:
                self._stop(_HEAD_TOO_LARGE)
                return
        if len(self._requests) > 1 and not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    # The parser's callbacks.

    def on_message_begin(self) -> None:
        self._in_head = self._began = True
        self._head_size = 0
        self._url = b""
        self._headers, self._raw = {}, []
        self._since, self._timeout = self.factory.now, self.factory.header_timeout

    def on_url(self, url: bytes) -> None:
        self._url += url
        if self._began:
            self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))
        self._headers[name.lower()] = value
        if self._began:
            self._count(len(name) + len(value) + 4)
        if len(self._raw) > self.factory.max_headers:
            raise _HeadTooLarge()

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.factory.max_head_bytes:
            raise _HeadTooLarge()

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser, factory = self._parser, self.factory
        if parser.should_upgrade() or self._closing:
            return  # `_upgrading` takes it from here, or nothing more is read
        if self._url.partition(b"?")[0] in factory.upgrade_paths:
            # Not an upgrade, but for Autobahn to answer: handed over without its body (it is
            # not read) and as the connection's last request.
            self._closing = True
            self._upgrading(b"", plain=True)
            return
        version = _VERSIONS.get(parser.get_http_version(), b"HTTP/1.0")
        request = Request(self, parser.get_method(), self._url, version, self._headers,
                          self._raw, version == b"HTTP/1.1" and parser.should_keep_alive())
        self._reading = request
        self._parts, self._size = [], 0
        self._since, self._timeout = factory.now, factory.body_timeout
        length = self._headers.get(b"content-length")
        known = int(length) if length is not None and length.isdigit() else None
        if known is not None and known > factory.max_body_bytes:
            self._refuse(request)
        elif request.method == b"POST" and request.path in factory.streamed_paths:
            request.upload = Upload(self.transport, known)
            self._queue(request)
        elif self._headers.get(b"expect", b"").lower() == b"100-continue" \
                and version == b"HTTP/1.1" and not self._requests:
            self.transport.write(_CONTINUE)

    def on_body(self, data: bytes) -> None:
        request = self._reading
        if request is None or request.oversized:
            return
        self._since = self.factory.now
        limit = self.factory.max_body_bytes
        upload = request.upload
        if upload is not None:
            if upload.received + len(data) > limit:
                request.oversized = True
                request.persistent = False
                if not request.startedWriting:
                    request.setHeader(b"connection", b"close")
                upload.too_large(limit)
            else:
                upload.feed(data)
        elif self._size + len(data) > limit:
            self._parts = []
            self._refuse(request)
        else:
            self._parts.append(data)
            self._size += len(data)

    def on_message_complete(self) -> None:
        request, self._reading = self._reading, None
        if request is None:  # an upgrade's
            return
        self._timeout = None
        request.complete = True
        if not request.persistent:
            self._closing = True
        if request.upload is not None:
            request.upload.end()
            if request.finished:
                self._answered(request)
        elif request.oversized:
            if request.finished:
                self._answered(request)
        else:
            if self._parts:
                request.content = BytesIO(b"".join(self._parts) if len(self._parts) > 1
                                          else self._parts[0])
                self._parts = []
            self._queue(request)

    # Answering, in order.

    def _queue(self, request: Request) -> None:
        self._requests.append(request)
        if len(self._requests) == 1:
            self._render(request)

    def _refuse(self, request: Request) -> None:
        """A body over the limit: a 413 in the endpoint's dialect, the rest dropped."""
        request.oversized = True
        request.persistent = False
        self._queue(request)

    def _render(self, request: Request) -> None:
        factory = self.factory
        root = factory.resource
        if request.oversized:
            limit = factory.max_body_bytes
            message = f"the request body exceeds the limit of {limit} bytes"
            # In the dialect of the endpoint the request is for (Anthropic's for /v1/messages).
            endpoint = endpoint_at(root, request.path)
            body = getattr(endpoint, "error_body", error_body)(413, message, "request_too_large")
            refused = getattr(root, "refused", None)  # `resource.Root`'s, which accounts
            if refused is not None:
                refused(request, 413, message)
            request.setResponseCode(413)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
            request.finish()
            return
        if request.upload is not None and not request.complete \
                and (request.getHeader(b"expect") or b"").lower() == b"100-continue" \
                and request.clientproto == b"HTTP/1.1":
            self.transport.write(_CONTINUE)
        try:
            body = getChildForRequest(root, request).render(request)
        except Exception:
            log.failure("rendering {path} failed", path=request.path)
            if request.startedWriting or request.finished:
                self.transport.loseConnection()
                return
            request.responseHeaders = type(request.responseHeaders)()
            body = error_body(500, "The gateway failed to answer.", "internal_error")
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"application/json")
        if body is NOT_DONE_YET:
            return
        if request.method == b"HEAD":
            if body and not request.responseHeaders.hasHeader(b"content-length"):
                request.setHeader(b"content-length", b"%d" % len(body))
            request.write(b"")
        else:
            request.setHeader(b"content-length", b"%d" % len(body))
            request.write(body)
        request.finish()

    def answered(self, request: Request) -> None:
        """`Request.finish`: the next request is answered once this one's body is all in."""
        if request.complete:
            self._answered(request)

    def _answered(self, request: Request) -> None:
        requests = self._requests
        requests.popleft()
        if not request.persistent:
            self._closing = True
            self.transport.loseConnection()
            return
        if requests:
            self._render(requests[0])
            return
        if self._last is not None:
            self.transport.write(self._last)
            self.transport.loseConnection()
            return
        if isinstance(self._upgrade, list):
            self._hand_over()
            return
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        reading = self._reading
        if reading is None:
            if not self._in_head:
                self._idle()
        elif (reading.getHeader(b"expect") or b"").lower() == b"100-continue" \
                and reading.upload is None \
                and reading.clientproto == b"HTTP/1.1" and not reading.oversized:
            self.transport.write(_CONTINUE)

    def _stop(self, refusal: tuple[int, bytes, str, str]) -> None:
        """
        A request that cannot be read: answered (after those owed), in the dialect of the
        endpoint its path names where it got that far, and the end.
        """
        endpoint = endpoint_at(self.factory.resource, self._url.partition(b"?")[0]) \
            if self._url.startswith(b"/") else None
        answer = _closing_answer(*refusal, getattr(endpoint, "error_body", error_body))
        self._closing = True
        self._timeout = None
        reading, self._reading = self._reading, None
        if reading is not None and reading in self._requests:
            # Its body went wrong while it was answered: there is no more to say.
            self.transport.loseConnection()
        elif self._requests:
            self._last = answer
        else:
            self.transport.write(answer)
            self.transport.loseConnection()

    # Upgrades.

    def _upgrading(self, rest: bytes, plain: bool = False) -> None:
        """
        An ``Upgrade`` request: handed over with its head (rebuilt) once answers are in.  A
        ``plain`` request (no upgrade) goes without its body's framing, and says ``close``.
        """
        parser = self._parser
        head = [b"%s %s HTTP/%s\r\n" % (parser.get_method(), self._url,
                                          parser.get_http_version().encode("ascii"))]
        for name, value in self._raw:
            if not plain or name.lower() not in _BODY_FRAMING:
                head += (name, b": ", value, b"\r\n")
        if plain:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        self._upgrade = [b"".join(head), rest]
        self._timeout = None
        if not self._requests:
            self._hand_over()
        elif not self._paused:
            self._paused = True
            self.transport.pauseProducing()

    def _hand_over(self) -> None:
        data = b"".join(self._upgrade)
        self.factory.untrack(self)
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        channel = self._upgrade = self.factory.upgrades.buildProtocol(self.transport.getPeer())
        channel.makeConnection(self.transport)
        channel.dataReceived(data)

    # The end, and timeouts.

    def _idle(self) -> None:
        self._since, self._timeout = self.factory.now, self.factory.idle_timeout

    def abort(self) -> None:
        self._timeout = None
        self.transport.abortConnection()

    def timed_out(self, now: float, readers: Any) -> bool:
        """
        Whether the phase under a timeout has lasted too long (the sweep's question); a body
        stalled because the gateway stopped reading it (an upload's upstream backpressure)
        is not the client's doing.
        """
        timeout = self._timeout
        if timeout is None or now - self._since <= timeout:
            return False
        if self._reading is not None and self.transport not in readers():
            self._since = now
            return False
        return True

    def connectionLost(self, reason: Any = None) -> None:
        upgrade = self._upgrade
        if upgrade is not None and not isinstance(upgrade, list):
            upgrade.connectionLost(reason)
            return
        self.factory.untrack(self)
        self._closing = True
        self._timeout = None
        reading = self._reading
        if reading is not None and reading not in self._requests:
            reading.connection_lost(reason)
        for request in self._requests:
            request.connection_lost(reason)
        self._requests.clear()


class HTTPServer(Factory):
    """
    The gateway's server factory: the resource tree at ``resource``, bodies bounded by
    ``max_body_bytes``, the streamed paths found in the tree once.  It keeps its open
    connections, so that a stopping gateway can close idle keep-alive ones.
    """

    max_head_bytes = 16 * 1024
    max_headers = 100
    header_timeout = 30.0
    body_timeout = 60.0
    idle_timeout = 120.0
    sweep_interval = 1.0
    noisy = False

    def __init__(self, resource: Any, max_body_bytes: int, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.resource = resource
        self.max_body_bytes = max_body_bytes
        self.streamed_paths = streamed_paths(resource)
        #: Where WebSocket resources are: every request there goes to twisted.web.
        self.upgrade_paths = paths_of(resource, lambda r: isinstance(r, WebSocketResource)
                                      or getattr(r, "takes_connection", False))
        self.upgrades = GatewaySite(resource)
        self._reactor = reactor
        self._connections: set[HTTPServerProtocol] = set()
        self._transports: set[Any] = set()
        self._all_closed: list[Deferred[None]] = []
        self._sweep = LoopingCall(self._swept)
        self._sweep.clock = reactor
        self.now = reactor.seconds()
        self.date = datetimeToString(self.now)

    def buildProtocol(self, addr: Any) -> HTTPServerProtocol:
        return HTTPServerProtocol(self)

    def track(self, connection: HTTPServerProtocol) -> None:
        if not self._connections:
            self._swept()
            self._sweep.start(self.sweep_interval, now=False)
        self._connections.add(connection)
        self._transports.add(connection.transport)

    def untrack(self, connection: HTTPServerProtocol) -> None:
        if connection not in self._connections:
            return
        self._connections.discard(connection)
        self._transports.discard(connection.transport)
        if not self._connections:
            self._sweep.stop()
            waiting, self._all_closed = self._all_closed, []
            for closed in waiting:
                closed.callback(None)

    def _swept(self) -> None:
        now = self.now = self._reactor.seconds()
        self.date = datetimeToString(now)
        readers = self._reactor.getReaders
        for connection in [c for c in self._connections if c.timed_out(now, readers)]:
            connection.abort()

    async def _close(self) -> None:
        closed: Deferred[None] = Deferred()
        if self._connections:
            self._all_closed.append(closed)
            for connection in list(self._connections):
                connection.transport.loseConnection()
        else:
            closed.callback(None)
        await closed
        await self.upgrades.close_connections()

    def close_connections(self) -> Deferred[None]:
        """Close every client connection (upgraded ones too); fires once all are gone."""
        return Deferred.fromCoroutine(self._close())
