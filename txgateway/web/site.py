"""The ``Site``: body limits, uploads streamed as they arrive, no per-request access-log
formatting, Nagle off."""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.web.http import parse_qs
from twisted.web.server import Request, Site

from txgateway.dialects.openai import error_body
from txgateway.web.resource import endpoint_at
from txgateway.web.upload import Upload, streamed_paths


class GatewayRequest(Request):
    """
    A request whose body is held in memory and bounded by the site's ``max_body_bytes``.

    A body over the limit (by its Content-Length, or as it arrives when chunked) is answered
    at once with 413 and an OpenAI error; the rest of it is read and dropped, so the client
    sees the answer rather than a reset, and the connection is closed when it ends.

    A POST to one of the site's ``streamed_paths`` is rendered as soon as its headers are in,
    its body fed to ``upload`` (`txgateway.web.upload`) as it arrives instead.  Its answer
    may come before the body has ended (an error): the rest is then dropped as it comes and
    the request finishes once the body has ended, so that the connection stays in step.
    """

    _oversized = False
    _finish_later = False
    #: The body as it arrives, on a streamed path; None when it is held whole.
    upload: Upload | None = None

    def gotLength(self, length: int | None) -> None:
        self.content = BytesIO()
        site, channel = self.channel.site, self.channel
        if length is not None and length > site.max_body_bytes:
            self._refuse_oversized()
        # Twisted has no public hook between the headers and the body: the request line is
        # still the channel's (and only the streamed paths pay for looking at it).
        elif (site.streamed_paths and channel._command == b"POST"
              and channel._path.partition(b"?")[0] in site.streamed_paths):
            self.upload = Upload(channel.transport, length)
            self._process_early(channel._command, channel._path, channel._version)

    def _process_early(self, command: bytes, uri: bytes, version: bytes) -> None:
        """`requestReceived` before the body: the resource renders with ``upload`` empty."""
        self.method, self.uri, self.clientproto = command, uri, version
        self.path, _, query = uri.partition(b"?")
        self.args = parse_qs(query, 1) if query else {}
        expect = self.requestHeaders.getRawHeaders(b"expect")
        if expect and expect[0].lower() == b"100-continue" and version == b"HTTP/1.1":
            # Said before any answer the resource writes at once (the channel would say it
            # after).
            self.requestHeaders.removeHeader(b"expect")
            self.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.process()

    def handleContentChunk(self, data: bytes) -> None:
        if self._oversized:
            return
        upload = self.upload
        if upload is not None:
            limit = self.channel.site.max_body_bytes
            if upload.received + len(data) > limit:
                self._oversized = True
                self.channel.persistent = False
                if not self.startedWriting:
                    self.setHeader(b"connection", b"close")
                upload.too_large(limit)
            else:
                upload.feed(data)
        elif self.content.tell() + len(data) > self.channel.site.max_body_bytes:
            self._refuse_oversized()
        else:
            self.content.write(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.upload is not None:
            self.upload.end()
            if self._finish_later:
                super().finish()
        elif self._oversized:
            self.channel.loseConnection()
        else:
            super().requestReceived(command, path, version)

    def finish(self) -> None:
        upload = self.upload
        if upload is not None and not upload.complete:
            upload.discard()
            if not self.startedWriting:
                self.write(b"")
            self._finish_later = True
        else:
            super().finish()

    def connectionLost(self, reason: Any) -> None:
        if self.upload is not None and not self.upload.complete:
            self.upload.fail(CancelledError("the client disconnected"))
        super().connectionLost(reason)

    def _refuse_oversized(self) -> None:
        self._oversized = True
        self.content = BytesIO()
        site = self.channel.site
        limit = site.max_body_bytes
        # In the dialect of the endpoint the request is for (Anthropic's for /v1/messages).
        endpoint = endpoint_at(site.resource, getattr(self.channel, "_path", b"")
                               .partition(b"?")[0])
        body = getattr(endpoint, "error_body", error_body)(
            413, f"the request body exceeds the limit of {limit} bytes", "request_too_large")
        self.channel.transport.write(
            b"HTTP/1.1 413 Request Entity Too Large\r\n"
            b"Content-Type: application/json\r\n"
            b"Connection: close\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        refused = getattr(self.channel.site.resource, "refused", None)  # `resource.Root`'s
        if refused is not None:
            refused(self, 413, f"the request body exceeds the limit of {limit} bytes")


class GatewaySite(Site):
    """
    The gateway's site; ``max_body_bytes`` bounds every request body, and the bodies of the
    resources whose ``streams_upload`` is set go upstream as they arrive (``streamed_paths``,
    found in the resource tree once).  It keeps its open connections, so that a stopping
    gateway can close idle keep-alive ones.
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
        self.streamed_paths = streamed_paths(resource)
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
