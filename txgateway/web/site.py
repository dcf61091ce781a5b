"""
The twisted.web ``Site`` the lean server (`txgateway.http.server`) hands WebSocket upgrades
to, so that Autobahn shakes hands through twisted.web as it expects; also what the tests'
fake upstreams serve with.  No per-request access-log formatting, Nagle off.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.web.server import Site


class GatewaySite(Site):
    """
    A site that keeps its open connections, so that a stopping gateway can close them.
    """

    displayTracebacks = False
    noisy = False

    def __init__(self, resource: Any, **kwargs: Any) -> None:
        # Without parsePOSTFormSubmission=False, Twisted parses every POST's Content-Type
        # with the email package to fill request.args from forms.
        super().__init__(resource, parsePOSTFormSubmission=False, **kwargs)
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
