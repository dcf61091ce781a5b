"""
The gateway's own HTTP/1.1 layer: a lean server protocol and upstream client for the hot path.

Endpoints never depend on which HTTP layer carries them: they see a request through the seam
`IGatewayRequest` below, which both twisted.web's ``Request`` (for the paths twisted.web keeps
serving, such as WebSocket upgrades) and the lean server's request provide.
"""

from typing import Any, Protocol

from twisted.internet import tcp
from twisted.internet.interfaces import IAddress
from zope.interface import Attribute, Interface


class StreamTransport(Protocol):
    """
    What the server uses of a connection's transport (TCP, UNIX or TLS): an ``ITransport``
    that is its own push producer and can abort.  ``setTcpNoDelay`` is TCP's own: the others
    raise AttributeError.
    """

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def getPeer(self) -> IAddress: ...
    def setTcpNoDelay(self, enabled: bool) -> None: ...


def socket_of(transport: Any) -> Any:
    """The socket `write_now` may send on: a plain TCP connection's, else None."""
    return transport.socket if isinstance(transport, tcp.Connection) else None


def write_now(transport: Any, socket: Any, data: bytes) -> None:
    """
    Write ``data``, straight to the socket when nothing is queued: Twisted's TCP transport
    would register for writability and send on the next reactor turn (two epoll_ctl calls
    and a poll per write); what the socket does not take is queued.  (Twisted has no public
    way to ask whether a transport holds unsent bytes: ``_tempDataBuffer`` is read here.)
    A transport that is closing is left to itself, as its ``write`` would.
    """
    if (socket is not None and not transport.dataBuffer and not transport._tempDataBuffer
            and transport.connected and not transport.disconnecting):
        try:
            sent = socket.send(data)
        except OSError:  # (would block, or broken: the transport finds out)
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


class IGatewayRequest(Interface):
    """
    What an endpoint may use of the request it answers: the subset of twisted.web's
    ``IRequest`` that the gateway's resources need, and nothing more.
    """

    method = Attribute("The method, as bytes (b'POST').")
    uri = Attribute("The request target as sent, as bytes (path and query).")
    path = Attribute("The path without the query, as bytes.")
    args = Attribute("The query arguments: dict of bytes to list of bytes.")
    prepath = Attribute("Path segments already traversed (list of bytes).")
    postpath = Attribute("Path segments still to traverse (list of bytes).")
    requestHeaders = Attribute("The request headers, a twisted.web.http_headers.Headers.")
    responseHeaders = Attribute("The response headers, a twisted.web.http_headers.Headers.")
    content = Attribute("The body held whole: a BytesIO (``getvalue()``).")
    upload = Attribute("The body as it arrives on a streamed path, else None.")
    code = Attribute("The response status set so far.")
    startedWriting = Attribute("True once the status line and headers are written.")
    finished = Attribute("True once `finish` was called.")

    def getHeader(name):  # noqa: N805
        """The last value of request header ``name`` (bytes), or None."""

    def setHeader(name, value):  # noqa: N805
        """Set response header ``name`` to ``value`` (both bytes), replacing any before."""

    def setResponseCode(code, message=None):  # noqa: N805
        """Set the response status."""

    def write(data):  # noqa: N805
        """Write part of the body (the headers go first, on the first write)."""

    def finish():  # noqa: N805
        """End the response."""

    def registerProducer(producer, streaming):  # noqa: N805
        """Register a producer paused and resumed with the client connection's buffer."""

    def unregisterProducer():  # noqa: N805
        """Unregister the producer."""

    def notifyFinish():  # noqa: N805
        """A Deferred that fires when the response ends, or fails if the client leaves."""

    def getClientAddress():  # noqa: N805
        """The client's address (an IAddress)."""

    def isSecure():  # noqa: N805
        """Whether the request came over TLS."""
