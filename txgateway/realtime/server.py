"""
``/v1/realtime``: the caller's leg, an Autobahn server protocol on the gateway's own Site.

The upstream is dialled inside ``onConnect``, before the caller's upgrade is answered, so a bad
key, an unknown model, a limit or an upstream refusal is an HTTP status with an OpenAI error
body, never a socket that opens and then closes.
"""

from __future__ import annotations

import secrets
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.web.http import RESPONSES
from zope.interface import implementer

from txgateway.dialects.openai import error_body
from txgateway.gateway import Gateway
from txgateway.providers import realtime_target
from txgateway.realtime.client_secrets import SecretRefused, caller_of
from txgateway.realtime.handshake import read_upgrade
from txgateway.realtime.legs import ILeg, WebSocketLeg
from txgateway.realtime.session import Session, SessionInfo, TooManySessions
from txgateway.realtime.upstream import UpstreamRefused, dial
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.overload import RETRY_AFTER


class Refused(Exception):
    """The upgrade is answered with an HTTP error instead."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 model: str = "", provider: Any = None, retry_after: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.body = error_body(status, message, code, param)
        self.model = model
        self.provider = provider


@implementer(ILeg)
class RealtimeServerProtocol(WebSocketLeg, WebSocketServerProtocol):
    """The caller's leg of one session."""

    gateway: Gateway
    session: Session | None = None
    _refusal: Refused | None = None
    _channel: Any = None

    def pause_source(self, producer: Any) -> None:
        # WebSocketResource leaves the HTTP channel registered as the transport's producer.
        self.transport.unregisterProducer()
        self.transport.registerProducer(producer, True)

    def onConnect(self, request: Any) -> Deferred[str | None]:
        return Deferred.fromCoroutine(self._handshake(request))

    async def _handshake(self, request: Any) -> str | None:
        started = self.gateway.reactor.seconds()
        try:
            return await self._admit(request)
        except Refused as refused:
            self._refusal = refused
            self._log_refusal(started, refused)
            raise ConnectionDeny(refused.status, RESPONSES.get(refused.status, b"Error").decode())

    def _log_refusal(self, started: float, refused: Refused) -> None:
        """A refused upgrade is logged and counted like any refused request."""
        accountant = self.gateway.accountant
        exchange = accountant.start("realtime")
        exchange.started = started
        exchange.status = refused.status
        exchange.error = str(refused)
        exchange.model = refused.model
        if refused.provider is not None:
            exchange.provider = refused.provider.name
            exchange.provider_kind = refused.provider.kind
        accountant.finish(exchange)

    async def _admit(self, request: Any) -> str | None:
        gateway = self.gateway
        settings = gateway.config.realtime
        upgrade = read_upgrade(request.headers, request.params, request.protocols)
        try:
            principal, upgrade, setup = await caller_of(gateway, upgrade, request.params)
        except SecretRefused as error:
            raise Refused(error.status, str(error), error.code, error.param) from None
        if principal is None:
            raise Refused(401, "Incorrect API key provided.", "invalid_api_key")
        name = upgrade.model
        if name is None and upgrade.intent == "transcription":
            name = settings.transcription_model
        if name is None:
            raise Refused(400, "Missing required parameter: 'model'.", "missing_model", "model")
        if not principal.may_use(name):
            raise Refused(403, f"This key may not use the model `{name}`.",
                          "model_not_allowed", "model", name)
        if principal.limits is not None:
            admission = await gateway.limiter.admit(principal.key_id, principal.limits, 0)
            if not admission.allowed:
                raise Refused(429, admission.message, "rate_limit_exceeded", None, name)
        route = gateway.router.resolve(name)
        if route is None:
            raise Refused(404, f"The model `{name}` does not exist or you do not have access "
                               "to it.", "model_not_found", "model", name)
        upstream_model = None if upgrade.model is None else route.model
        target = realtime_target(route.provider, upstream_model, upgrade.intent, upgrade.beta)
        if target is None:
            raise Refused(400, f"The model `{name}` is not served for realtime sessions.",
                          "model_not_realtime", "model", name, route.provider)
        info = SessionInfo(
            id="rts_" + secrets.token_hex(12), model=name, provider=route.provider.name,
            provider_kind=route.provider.kind, upstream_model=upstream_model or "",
            key_id=principal.key_id, intent=upgrade.intent, beta=upgrade.beta,
            limits=principal.limits)
        try:
            self.session = session = gateway.realtime.admit(info)
        except TooManySessions as error:
            # The gateway's own cap is an overload (retry soon, maybe elsewhere); a key's
            # is that caller's rate limit.
            raise Refused(503 if error.overloaded else 429, str(error), "too_many_sessions",
                          None, name, route.provider,
                          RETRY_AFTER if error.overloaded else b"") from None
        try:
            upstream = await dial(gateway.reactor, target, session, settings,
                                  gateway.config.upstream.connect_timeout)
        except UpstreamRefused as error:
            session.refused()
            raise Refused(error.status, str(error), error.code, None, name,
                          route.provider) from None
        session.upstream_ready(upstream)
        if setup is not None:
            upstream.send(setup, False)
        return upgrade.protocol

    def sendHttpErrorResponse(self, code: int, reason: str, responseHeaders: Any = None) -> None:
        """A refusal carries an OpenAI error body, not just a status line."""
        refused, self._refusal = self._refusal, None
        if refused is None:
            return super().sendHttpErrorResponse(code, reason, responseHeaders)
        retry = refused.retry_after and b"Retry-After: %s\r\n" % refused.retry_after
        self.sendData(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%s"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                      % (code, reason.encode(), retry, len(refused.body), refused.body))

    def connectionMade(self) -> None:
        super().connectionMade()
        self._channel = self.factory.upgrading

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        # The HTTP channel the upgrade came on never sees its transport close otherwise, and
        # the site (which closes every connection at stop) waits for that.
        if self._channel is not None:
            channel, self._channel = self._channel, None
            channel.connectionLost(reason)

    def onOpen(self) -> None:
        self.session.client_opened(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.session.from_client(payload, isBinary)

    def onAutoPingTimeout(self) -> None:
        """Autobahn drops a caller that stops answering pings; the session is told why first."""
        if self.session is not None:
            self.session.client_unresponsive()
        super().onAutoPingTimeout()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session.client_closed(wasClean, code, reason)


class _RealtimeResource(WebSocketResource):
    """Lends the upgraded request's HTTP channel to the protocol it is handed to."""

    openapi = Endpoint("Realtime", {"GET": Operation(
        "Open a realtime session (a WebSocket upgrade; see docs/realtime.md)", query={
            "model": "the model routed", "intent": "transcription for a transcription session"})})

    def render(self, request: Any) -> Any:
        self._factory.upgrading = request.channel
        try:
            return super().render(request)
        finally:
            self._factory.upgrading = None


def realtime_resource(gateway: Gateway) -> WebSocketResource:
    """The ``/v1/realtime`` resource, with the config's limits and keepalive."""
    settings = gateway.config.realtime
    factory = WebSocketServerFactory(server="txgateway")
    factory.protocol = type("RealtimeProtocol", (RealtimeServerProtocol,), {"gateway": gateway})
    factory.setProtocolOptions(
        maxMessagePayloadSize=settings.max_message_bytes,
        maxFramePayloadSize=settings.max_message_bytes,
        autoPingInterval=settings.ping_interval,
        autoPingTimeout=settings.ping_timeout,
        # The upstream is dialled inside the handshake.
        openHandshakeTimeout=gateway.config.upstream.connect_timeout * 2 + 5,
        closeHandshakeTimeout=5,
        # A caller breaking a limit (a message over the maximum size) is told why with a close
        # code (1009), rather than having its connection dropped.
        failByDrop=False,
    )
    return _RealtimeResource(factory)
