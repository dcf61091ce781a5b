"""
The request an endpoint answers on the lean server (`txgateway.http.server`): the
`IGatewayRequest` seam, with no more of twisted.web's ``Request`` than the resources use.

It renders through twisted.web ``Resource`` trees unchanged (``prepath``/``postpath``,
``render`` returning bytes or ``NOT_DONE_YET``) and keeps twisted.web's rules where callers
could tell: writing after `finish` or finishing after the client left raises, writes after
it left are dropped, `notifyFinish` fails with the connection's reason.  The answer's head is
written with its first body bytes, in one write; without a Content-Length it is chunked.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import ISSLTransport
from twisted.web.http import RESPONSES, parse_qs
from twisted.web.http_headers import Headers
from zope.interface import implementer

from txgateway.http import IGatewayRequest, write_now

#: Statuses whose answers have no body (nor framing).
_BODYLESS = frozenset({204, 304})


@implementer(IGatewayRequest)
class Request:
    """One request on an `HTTPServerProtocol` connection (its ``channel``)."""

    code = 200
    code_message = b"OK"
    startedWriting = False
    finished = False
    #: The body as it arrives, on a streamed path; None when it is held whole.
    upload: Any = None
    #: The body went over the limit: refused with a 413, the rest of it dropped.
    oversized = False
    #: The whole request (its body too) has been read.
    complete = False

    def __init__(self, channel: Any, method: bytes, uri: bytes, version: bytes,
                 headers: dict[bytes, bytes], raw_headers: list[tuple[bytes, bytes]],
                 persistent: bool) -> None:
        self.channel = channel
        self.method, self.uri, self.clientproto = method, uri, version
        path, _, query = uri.partition(b"?")
        self.path = path
        self.args = parse_qs(query, 1) if query else {}
        self.prepath: list[bytes] = []
        self.postpath = path.split(b"/")[1:]
        self.content = BytesIO()
        self.persistent = persistent
        self.responseHeaders = Headers()
        self._headers = headers
        self._raw_headers = raw_headers
        self._request_headers: Headers | None = None
        self._chunked = False
        self._lost: Any = None
        self._waiting: list[Deferred[None]] = []

    # What the request says.

    def getHeader(self, name: bytes) -> bytes | None:
        return self._headers.get(name.lower())

    @property
    def requestHeaders(self) -> Headers:
        """Built on first use: most requests never need more than `getHeader`."""
        if self._request_headers is None:
            headers = self._request_headers = Headers()
            for name, value in self._raw_headers:
                headers.addRawHeader(name, value)
        return self._request_headers

    def getClientAddress(self) -> Any:
        return self.channel.transport.getPeer()

    def isSecure(self) -> bool:
        return ISSLTransport.providedBy(self.channel.transport)

    # The answer.

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        self.code = code
        self.code_message = message or RESPONSES.get(code, b"Unknown Status")

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        self.responseHeaders.setRawHeaders(name, [value])

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("Request.write called on a request after Request.finish")
        if self._lost is not None:
            return
        channel = self.channel
        if not self.startedWriting:
            self.startedWriting = True
            head = self._head()
            if data and self.method != b"HEAD":
                head += b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data
            write_now(channel.transport, channel.socket, head)
        elif data and self.method != b"HEAD":
            write_now(channel.transport, channel.socket,
                      b"%x\r\n%s\r\n" % (len(data), data) if self._chunked else data)

    def finish(self) -> None:
        if self.finished:
            raise RuntimeError("Request.finish called twice")
        if self._lost is not None:
            raise RuntimeError("Request.finish called on a request after its connection "
                               "was lost; use Request.notifyFinish to keep track of this.")
        if not self.startedWriting:
            if self.code not in _BODYLESS and not self.responseHeaders.hasHeader(
                    b"content-length") and self.method != b"HEAD":
                self.responseHeaders.setRawHeaders(b"content-length", [b"0"])
            self.write(b"")
        if self._chunked:
            write_now(self.channel.transport, self.channel.socket, b"0\r\n\r\n")
        self.finished = True
        upload = self.upload
        if upload is not None and not upload.complete:
            upload.discard()  # answered before the body ended: the rest is dropped
        waiting, self._waiting = self._waiting, []
        for finished in waiting:
            finished.callback(None)
        self.channel.answered(self)

    def _head(self) -> bytes:
        """The status line and headers, and the framing the answer's writes use."""
        headers = self.responseHeaders
        code = self.code
        lines = [b"HTTP/1.1 %d %s\r\n" % (code, self.code_message)]
        if headers.getRawHeaders(b"connection") == [b"close"]:
            self.persistent = False
        if (code not in _BODYLESS and code >= 200 and self.method != b"HEAD"
                and not headers.hasHeader(b"content-length")):
            if self.clientproto == b"HTTP/1.1":
                self._chunked = True
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.persistent = False  # its end is the connection's
        if not self.persistent and not headers.hasHeader(b"connection"):
            lines.append(b"Connection: close\r\n")
        for name, values in headers.getAllRawHeaders():
            for value in values:
                lines += (name, b": ", value, b"\r\n")
        lines += (b"Date: ", self.channel.factory.date, b"\r\n\r\n")
        return b"".join(lines)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.channel.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.channel.transport.unregisterProducer()

    def notifyFinish(self) -> Deferred[None]:
        finished: Deferred[None] = Deferred()
        if self._lost is not None:
            finished.errback(self._lost)
        elif self.finished:
            finished.callback(None)
        else:
            self._waiting.append(finished)
        return finished

    def loseConnection(self) -> None:
        self.channel.transport.loseConnection()

    # The connection's side.

    def connection_lost(self, reason: Any) -> None:
        """The client left: an unfinished answer's waiters fail, an unfinished body too."""
        upload = self.upload
        if upload is not None and not upload.complete:
            upload.fail(CancelledError("the client disconnected"))
        if self.finished:
            return
        self._lost = reason
        waiting, self._waiting = self._waiting, []
        for finished in waiting:
            finished.errback(reason)
