"""The ``Site``: body limits, no per-request access-log formatting, Nagle off."""

from __future__ import annotations

from io import BytesIO
from typing import Any

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
    """The gateway's site; ``max_body_bytes`` bounds every request body."""

    requestFactory = GatewayRequest
    displayTracebacks = False
    noisy = False

    def __init__(self, resource: Any, max_body_bytes: int, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.max_body_bytes = max_body_bytes

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.connectionMade = _no_delay(channel.connectionMade, channel)
        return channel

    def log(self, request: Any) -> None:
        """The access log is written by the accountant, in JSON; skip Combined Log format."""


def _no_delay(connection_made: Any, channel: Any) -> Any:
    """Answers are written whole, so Nagle's algorithm only adds latency: switch it off."""

    def made() -> None:
        connection_made()
        try:
            channel.transport.setTcpNoDelay(True)
        except (AttributeError, OSError):  # UNIX sockets have no Nagle
            pass

    return made
