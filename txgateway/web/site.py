"""The ``Site``: body limits, no per-request access-log formatting, Nagle off."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import Request, Site

from txgateway.dialects.openai import error_body


class GatewayRequest(Request):
    """
    A request whose body is held in memory and bounded by the site's ``max_body_bytes``.

    A body over the limit (by its Content-Length, or as it arrives when chunked) is answered
    at once with 413 and an OpenAI error; the rest of it is read and dropped, so the client
    sees the answer rather than a reset, and the connection is closed when it ends.
    """

    _oversized = False

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()
        if length is not None and length > self.channel.site.max_body_bytes:
            self._refuse_oversized()

    def handleContentChunk(self, data: bytes) -> None:
        if self._oversized:
            return
        if self.content.tell() + len(data) > self.channel.site.max_body_bytes:
            self._refuse_oversized()
        else:
            self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._oversized:
            self.channel.loseConnection()
        else:
            super().requestReceived(command, path, version)

    def _refuse_oversized(self) -> None:
        self._oversized = True
        self.content = BytesIO()
        limit = self.channel.site.max_body_bytes
        body = error_body(413, f"the request body exceeds the limit of {limit} bytes",
                          "request_too_large")
        self.channel.transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Connection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )


class GatewaySite(Site):
    """
    The gateway's site; ``max_body_bytes`` bounds every request body.  It keeps its open
    connections, so that a stopping gateway can close idle keep-alive ones.
    """

    requestFactory = GatewayRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, resource: Any, max_body_bytes: int, **kwargs: Any) -> None:
        # Without parsePOSTFormSubmission=False, Twisted parses every POST's Content-Type
        # with the email package to fill request.args from forms: a fifth of the CPU a
        # proxied request cost.
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
        self.max_body_bytes = max_body_bytes
        self._transports: set[Any] = set()
        self._all_closed: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        make, lost = channel.makeConnection, channel.connectionLost
        transports = self._transports
        mine: list[Any] = []

        def make_connection(transport: Any) -> None:
            mine.append(transport)
            transports.add(transport)
            try:
                # Answers are written whole: Nagle's algorithm would only add latency.
                transport.setTcpNoDelay(True)
            except (AttributeError, OSError):  # UNIX sockets have no Nagle
                pass
            make(transport)

        def connection_lost(reason: Any) -> None:
            lost(reason)
            transports.difference_update(mine)
            if not transports:
                waiting, self._all_closed = self._all_closed, []
                for closed in waiting:
                    closed.callback(None)

        channel.makeConnection, channel.connectionLost = make_connection, connection_lost
        return channel

    def close_connections(self) -> Deferred[None]:
        """Close every client connection; fires once all are gone."""
        closed: Deferred[None] = Deferred()
        if not self._transports:
            closed.callback(None)
            return closed
        self._all_closed.append(closed)
        for transport in list(self._transports):
            transport.loseConnection()
        return closed

    def log(self, request: Any) -> None:
        """The access log is written by the accountant, in JSON; skip Combined Log format."""
