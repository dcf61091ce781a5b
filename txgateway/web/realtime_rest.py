"""
``/v1/realtime`` and the REST resources beside its WebSocket: ``client_secrets`` issues the
ephemeral keys browsers open sessions with (`txgateway.realtime.client_secrets`), ``calls``
takes WebRTC offers (`txgateway.web.realtime_calls`).
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource

from txgateway.admission import key_refused
from txgateway.auth import caller_key
from txgateway.dialects.openai import BadRequest, error_body, parse_object
from txgateway.gateway import Gateway
from txgateway.realtime.client_secrets import SecretRefused, issue, parse_request
from txgateway.realtime.server import realtime_resource
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.realtime_calls import RealtimeCalls
from txgateway.web.resource import JSONResource, answer_later


class RealtimeTree(JSONResource):
    """The WebSocket at ``/v1/realtime`` itself, REST children below it."""

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
    return tree


class ClientSecrets(JSONResource):
    """``POST /v1/realtime/client_secrets``: an ephemeral key under the caller's own key."""

    isLeaf = True
    route = "realtime_client_secrets"
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
        expires_at, session = parse_request(body, now)
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
        value, secret = await issue(gateway.store, principal, key, expires_at, session, now)
        return {"value": value, "expires_at": int(expires_at),
                "session": secret.session_object()}
