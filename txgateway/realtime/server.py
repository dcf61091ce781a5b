"""
``/v1/realtime``: the caller's leg, an Autobahn server protocol on the gateway's own Site.

The upstream is dialled inside ``onConnect``, before the caller's upgrade is answered, so a bad
key, an unknown model, a limit or an upstream refusal is an HTTP status with an OpenAI error
body, never a socket that opens and then closes.
"""

from __future__ import annotations

import secrets
from typing import Any

import attrs
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES
from zope.interface import implementer

from txgateway.accounting import Outcome
from txgateway.admission import Refusal, admit, said
from txgateway.dialects.errors import OPENAI
from txgateway.dialects.openai import error_body
from txgateway.gateway import Gateway
from txgateway.providers import prepare, realtime_target
from txgateway.realtime.budget import key_budget
from txgateway.realtime.client_secrets import SecretRefused, caller_of
from txgateway.realtime.handshake import read_upgrade
from txgateway.realtime.legs import IFrameLeg, WebSocketLeg
from txgateway.realtime.live import started_with
from txgateway.realtime.seats import TooManySessions
from txgateway.realtime.session import Session, SessionInfo
from txgateway.realtime.translated import dial_session
from txgateway.realtime.upstream import UpstreamRefused
from txgateway.upstream import UpstreamError
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.overload import RETRY_AFTER


class Refused(Exception):
    """The upgrade is answered with an HTTP error instead."""

    def __init__(self, status: int, message: str, code: str | None,
                 param: str | None = None, model: str = "", provider: Any = None,
                 key_id: str | None = None, retry_after: bytes = b"") -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.body = error_body(status, message, code, param)
        self.model = model
        self.provider = provider
        self.key_id = key_id


# Autobahn's own bases disagree on the types of ``peer`` and ``_transport_details``.
@implementer(IFrameLeg)
class RealtimeServerProtocol(WebSocketLeg, WebSocketServerProtocol):  # type: ignore[misc]
    """The caller's leg of one session."""

    gateway: Gateway
    #: The intent of a surface served at a path of its own (translations, Live sessions).
    surface: str | None = None
    session: Session | None = None
    _refusal: Refused | None = None
    #: A Live session's routed model, until its ``session.start`` is sent naming it.
    _live_model: str | None = None
    _channel: Any = None

    def pause_source(self, producer: Any) -> None:
        # WebSocketResource leaves the HTTP channel registered as the transport's producer.
        self.transport.unregisterProducer()
        self.transport.registerProducer(producer, True)

    # Autobahn waits on a Deferred returned here, though its annotation does not say so.
    def onConnect(self, request: Any) -> Deferred[str | None]:  # type: ignore[override]
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
        exchange.started, exchange.model, exchange.key_id = started, refused.model, refused.key_id
        provider = refused.provider
        accountant.finish(exchange, Outcome(
            refused.status, str(refused), provider="" if provider is None else provider.name,
            provider_kind="" if provider is None else provider.kind))

    async def _admit(self, request: Any) -> str | None:
        gateway = self.gateway
        settings = gateway.config.realtime
        upgrade = read_upgrade(request.headers, request.params, request.protocols)
        try:
            principal, upgrade, setup = await caller_of(gateway, upgrade, request.params)
        except SecretRefused as error:
            raise Refused(error.status, str(error), error.code, error.param) from None
        if self.surface is not None:
            upgrade = attrs.evolve(upgrade, intent=self.surface)
        name = upgrade.model
        if name is None and upgrade.intent == "transcription":
            name = settings.transcription_model
        if name is None and upgrade.intent == "live":
            name = settings.live_model
        if name is None and principal is not None:
            raise Refused(400, "Missing required parameter: 'model'.", "missing_model", "model",
                          key_id=principal.key_id)
        name = name or ""
        try:
            admitted = await admit(gateway, principal, upgrade.key is not None, name, 0,
                                   OPENAI)
        except Refusal as refusal:
            raise Refused(refusal.status, str(refusal), refusal.code, refusal.param,
                          said(gateway, name), key_id=refusal.caller.key_id) from None
        route, caller = admitted.plan[0], admitted.caller
        # The key's spend before the session, for its budget at each response.create.
        spent = None
        if (caller.key_id is not None and caller.limits is not None
                and caller.limits.budget_usd > 0):
            spent = await gateway.limiter.spent(caller.key_id, caller.limits)
        upstream_model = None if upgrade.model is None else route.model
        waiting = prepare(route.provider)  # an OAuth token to mint first, say
        if waiting is not None:
            try:
                await waiting
            except UpstreamError as error:
                raise Refused(error.status, str(error), error.code, None, name,
                              route.provider) from None
        target = realtime_target(route.provider, upstream_model, upgrade.intent, upgrade.beta)
        if target is None:
            raise Refused(400, f"The model `{name}` is not served for realtime sessions.",
                          "model_not_realtime", "model", name, route.provider)
        info = SessionInfo(
            id="rts_" + secrets.token_hex(12), model=name, provider=route.provider.name,
            provider_kind=route.provider.kind,
            # A Live session's model is the one its session.start is sent naming.
            upstream_model=route.model if upgrade.intent == "live" else upstream_model or "",
            key_id=caller.key_id, intent=upgrade.intent, beta=upgrade.beta,
            limits=caller.limits)
        try:
            self.session = session = await gateway.realtime.admit(info)
        except TooManySessions as error:
            # The gateway's own cap is an overload (retry soon, maybe elsewhere); a key's
            # is that caller's rate limit.
            raise Refused(503 if error.overloaded else 429, str(error), "too_many_sessions",
                          None, name, route.provider, caller.key_id,
                          RETRY_AFTER if error.overloaded else b"") from None
        try:
            upstream = await dial_session(gateway.reactor, route.provider, route.model,
                                          upgrade.intent, target, session, settings,
                                          gateway.config.upstream.connect_timeout)
        except UpstreamRefused as error:
            session.refused()
            raise Refused(error.status, str(error), error.code, None, name,
                          route.provider) from None
        session.upstream_ready(upstream)
        if upgrade.intent == "live":
            self._live_model = route.model
        if spent is not None:
            session.response_guard = key_budget(gateway.accountant, spent)
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

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        # The HTTP channel the upgrade came on never sees its transport close otherwise, and
        # the site (which closes every connection at stop) waits for that.
        if self._channel is not None:
            channel, self._channel = self._channel, None
            channel.connectionLost(reason)

    def onOpen(self) -> None:
        assert self.session is not None, "a session opens only once admitted"
        self.session.client_opened(self)

    def _take_over(self) -> None:
        if self._live_model is None:  # a Live session's session.start is rewritten first
            super()._take_over()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self._live_model is not None and not isBinary:
            # The first event of a Live session is its session.start.
            payload = started_with(payload, self._live_model) or payload
            self._live_model = None
        assert self.session is not None, "a session opens only once admitted"
        self.session.from_client(payload, isBinary)

    def onAutoPingTimeout(self) -> None:
        """Autobahn drops a caller that stops answering pings; the session is told why first."""
        if self.session is not None:
            self.session.client_unresponsive()
        super().onAutoPingTimeout()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.session is not None:
            self.session.client_closed(wasClean, code, reason)


class _RealtimeFactory(WebSocketServerFactory):
    #: The HTTP channel of the upgrade being handed to a new protocol, while it is.
    upgrading: Any = None


class _RealtimeResource(WebSocketResource):
    """Lends the upgraded request's HTTP channel to the protocol it is handed to."""

    openapi = Endpoint("Realtime", {"GET": Operation(
        "Open a realtime session (a WebSocket upgrade; see docs/realtime.md)", query={
            "model": "the model routed", "intent": "transcription for a transcription session"})})

    def __init__(self, factory: _RealtimeFactory) -> None:
        super().__init__(factory)
        self.factory = factory  # WebSocketResource keeps it only as a private attribute

    def render(self, request: Any) -> Any:
        self.factory.upgrading = request.channel
        try:
            return super().render(request)
        finally:
            self.factory.upgrading = None


def realtime_resource(gateway: Gateway, surface: str | None = None) -> WebSocketResource:
    """
    The ``/v1/realtime`` resource, with the config's limits and keepalive; with a ``surface``,
    a session of that intent at its own path (``/v1/realtime/translations``, ...).
    """
    settings = gateway.config.realtime
    factory = _RealtimeFactory(server="txgateway")

    class RealtimeProtocol(RealtimeServerProtocol):
        """The caller's leg of a session at this resource."""

    RealtimeProtocol.gateway, RealtimeProtocol.surface = gateway, surface
    factory.protocol = RealtimeProtocol
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
    resource = _RealtimeResource(factory)
    if surface is not None:
        resource.openapi = Endpoint("Realtime", {"GET": Operation(
            f"Open a {surface} session (a WebSocket upgrade; see docs/realtime.md)",
            query={"model": "the model routed"})})
    return resource
