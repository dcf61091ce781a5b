"""
Dialling a provider's realtime WebSocket: verified TLS for ``wss://``, the provider's own
headers, and a refusal reported with the upstream's HTTP status.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from zope.interface import implementer

from txgateway.config import RealtimeSettings
from txgateway.providers import RealtimeTarget
from txgateway.realtime.legs import IFrameLeg, ILeg, IUpstreamListener, WebSocketLeg


class UpstreamRefused(Exception):
    """The upstream would not open the session; ``status`` is what the caller is answered."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def caller_status(upstream_status: int | None) -> int:
    """
    The status a caller sees for an upstream's refusal.  The upstream's 401 and 403 are about
    the gateway's provider key, not the caller's, so they are a bad gateway (502).
    """
    if upstream_status in (400, 404, 409, 413, 422, 429):
        return upstream_status
    return 502


# Autobahn's own bases disagree on the types of ``peer`` and ``_transport_details``.
@implementer(IFrameLeg)
class UpstreamProtocol(WebSocketLeg, WebSocketClientProtocol):  # type: ignore[misc]
    """The upstream leg over the network."""

    factory: _DialFactory
    listener: Any = None
    _status: int | None = None

    def pause_source(self, producer: Any) -> None:
        self.transport.registerProducer(producer, True)

    def failHandshake(self, reason: str) -> None:
        status_line = getattr(self, "http_status_line", "") or ""
        parts = status_line.split()
        if len(parts) > 1 and parts[1].isdigit():
            self._status = int(parts[1])
        super().failHandshake(reason)

    def onOpen(self) -> None:
        opened, self.factory.opened = self.factory.opened, None
        assert opened is not None, "a leg opens once"
        opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.listener.upstream_message(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        opened = self.factory.opened
        if opened is not None:
            self.factory.opened = None
            if self._status is not None:
                message = f"the provider refused the realtime session with HTTP {self._status}"
                opened.errback(UpstreamRefused(caller_status(self._status), message,
                                               "upstream_refused"))
            else:
                opened.errback(UpstreamRefused(
                    502, f"the provider's realtime server failed: {reason}", "upstream_error"))
        else:
            self.listener.upstream_closed(wasClean, code, reason)


class _DialFactory(WebSocketClientFactory):
    """Dials one upstream leg, and fires ``opened`` with it once its handshake is through."""

    opened: Deferred[ILeg] | None = None
    #: One factory a session: its start and stop are no news worth two log lines each.
    noisy = False


def dial(reactor: Any, target: RealtimeTarget, listener: IUpstreamListener,
         settings: RealtimeSettings, connect_timeout: float) -> Deferred[ILeg]:
    """Open the upstream leg; fails with `UpstreamRefused`."""
    if target.local is not None:
        return maybeDeferred(target.local, listener).addErrback(_unreachable)
    url = urlsplit(target.url)
    secure = url.scheme == "wss"
    host = url.hostname or ""
    port = url.port or (443 if secure else 80)
    factory = _DialFactory(target.url, headers=dict(target.headers),
                           protocols=list(target.protocols) or None, useragent="txgateway")
    factory.protocol = UpstreamProtocol
    factory.setProtocolOptions(
        maxMessagePayloadSize=settings.max_message_bytes,
        maxFramePayloadSize=settings.max_message_bytes,
        openHandshakeTimeout=connect_timeout,
        closeHandshakeTimeout=5,
        autoPingInterval=settings.ping_interval,
        autoPingTimeout=settings.ping_timeout,
        # The provider is trusted: validating the UTF-8 of every text frame it sends cost a
        # sizeable share of the relay's CPU.  The caller's frames are still validated.
        utf8validateIncoming=False,
    )
    factory.opened = opened = Deferred[ILeg]()
    endpoint: Any = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    if secure:
        endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)

    def connected(protocol: UpstreamProtocol) -> Deferred[ILeg]:
        protocol.listener = listener
        return opened

    return endpoint.connect(factory).addCallback(connected).addErrback(_unreachable)


def _unreachable(failure: Any) -> Any:
    if failure.check(UpstreamRefused):
        return failure
    raise UpstreamRefused(502, f"the provider's realtime server is unreachable: "
                               f"{failure.getErrorMessage()}", "upstream_unreachable")
