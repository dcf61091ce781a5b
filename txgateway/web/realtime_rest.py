"""
``/v1/realtime`` and the REST resources beside its WebSocket: ``client_secrets`` issues the
ephemeral keys browsers open sessions with (`txgateway.realtime.client_secrets`), ``calls``
takes WebRTC offers (`txgateway.web.realtime_calls`); ``translations`` and ``/v1/live/sessions``
are sessions of their own intent, relayed and tallied like any other.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource

from txgateway.admission import key_refused
from txgateway.auth import caller_key
from txgateway.dialects.openai import BadRequest, error_body, parse_object
from txgateway.gateway import Gateway
from txgateway.realtime.client_secrets import (
    ClientSecret,
    SecretRefused,
    issue,
    parse_beta_transcription,
    parse_request,
)
from txgateway.realtime.server import realtime_resource
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.realtime_calls import RealtimeCalls
from txgateway.web.resource import JSONResource, answer_later


class RealtimeTree(JSONResource):
    """The WebSocket at ``/v1/realtime`` itself, REST children below it."""

    #: Its requests take over the connection (the HTTP server hands them to twisted.web).
    takes_connection = True

    def __init__(self, socket: Any) -> None:
        super().__init__()
        self._socket = socket
        self.openapi = socket.openapi

    def render(self, request: Any) -> Any:
        return self._socket.render(request)


def realtime_tree(gateway: Gateway) -> Resource:
    tree = RealtimeTree(realtime_resource(gateway))
    tree.putChild(b"client_secrets", ClientSecrets(gateway))
    tree.putChild(b"calls", RealtimeCalls(gateway))
    tree.putChild(b"transcription_sessions", TranscriptionSessions(gateway))
    translations = RealtimeTree(realtime_resource(gateway, "translation"))
    translations.putChild(b"client_secrets", TranslationClientSecrets(gateway))
    tree.putChild(b"translations", translations)
    return tree


def live_tree(gateway: Gateway) -> Resource:
    """``/v1/live``: the WebSocket of Live sessions at ``/v1/live/sessions``."""
    tree = Resource()
    tree.putChild(b"sessions", realtime_resource(gateway, "live"))
    return tree


class ClientSecrets(JSONResource):
    """``POST /v1/realtime/client_secrets``: an ephemeral key under the caller's own key."""

    isLeaf = True
    route = "realtime_client_secrets"
    #: Whether its secrets open beta sessions.
    beta = False
    openapi = Endpoint("Realtime", {"POST": Operation(
        "Create an ephemeral key (client secret) for a browser's realtime session", "Object")})

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def render_POST(self, request: Any) -> Any:
        async def answered() -> tuple[int, Any]:
            try:
                return 200, await self._issue(request)
            except SecretRefused as error:
                return error.status, error_body(error.status, str(error), error.code,
                                                error.param)

        return answer_later(request, answered())

    async def _issue(self, request: Any) -> dict[str, Any]:
        gateway = self._gateway
        key = caller_key(request)
        principal = await gateway.authenticator.authenticate(key)
        if principal is None:
            raise SecretRefused(401, key_refused(key is not None), "invalid_api_key")
        raw = request.content.read()
        try:
            body = parse_object(raw) if raw.strip() else {}
        except BadRequest as error:
            raise SecretRefused(400, str(error), "invalid_json") from None
        now = gateway.reactor.seconds()
        expires_at, session = self.parse(body, now)
        model = session.get("model")
        if model is not None:
            if not principal.may_use(model):
                raise SecretRefused(403, f"This key may not use the model `{model}`.",
                                    "model_not_allowed", "session.model")
            if gateway.router.resolve(model) is None:
                raise SecretRefused(404, f"The model `{model}` does not exist or you do not "
                                    "have access to it.", "model_not_found", "session.model")
        if principal.limits is not None:
            admission = await gateway.limiter.admit(principal.key_id, principal.limits, 0)
            if not admission.allowed:
                raise SecretRefused(429, admission.message, "rate_limit_exceeded")
        value, secret = await issue(gateway.store, principal, key, expires_at, session, now,
                                    self.beta)
        return self.answer(value, secret)

    def parse(self, body: dict[str, Any], now: float) -> tuple[float, dict[str, Any]]:
        return parse_request(body, now)

    def answer(self, value: str, secret: ClientSecret) -> dict[str, Any]:
        return {"value": value, "expires_at": int(secret.expires_at),
                "session": secret.session_object()}


class TranslationClientSecrets(ClientSecrets):
    """``POST /v1/realtime/translations/client_secrets``: a secret for a translation session."""

    route = "realtime_translation_client_secrets"
    openapi = Endpoint("Realtime", {"POST": Operation(
        "Create an ephemeral key (client secret) for a browser's translation session",
        "Object")})

    def parse(self, body: dict[str, Any], now: float) -> tuple[float, dict[str, Any]]:
        session = body.get("session")
        expires_at, session = parse_request(
            {**body, "session": {**(session if isinstance(session, dict) else {}),
                                 "type": "translation"}}, now)
        return expires_at, session


class TranscriptionSessions(ClientSecrets):
    """
    ``POST /v1/realtime/transcription_sessions`` (beta): the session config is the body, the
    secret comes back as ``client_secret``, and it opens beta transcription sessions.
    """

    route = "realtime_transcription_sessions"
    openapi = Endpoint("Realtime", {"POST": Operation(
        "Create an ephemeral key for a beta transcription session", "Object")})
    beta = True

    def parse(self, body: dict[str, Any], now: float) -> tuple[float, dict[str, Any]]:
        return parse_beta_transcription(body, now)

    def answer(self, value: str, secret: ClientSecret) -> dict[str, Any]:
        session = secret.session_object()
        del session["type"]
        session["client_secret"] = {"value": value, "expires_at": session.pop("expires_at")}
        return session
