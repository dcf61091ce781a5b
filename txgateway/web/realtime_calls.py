"""
``POST /v1/realtime/calls`` (a WebRTC offer, ``application/sdp`` or a form of ``sdp`` and
``session``) and ``POST /v1/realtime/calls/{call_id}/{accept,reject,refer,hangup}``.

The offer goes to the provider with the gateway's key, always as the form (its session's model
the route's upstream model, a client secret's config under the caller's own); the SDP answer
and ``Location`` come back unchanged, once the gateway's sideband for the call is open
(`txgateway.realtime.calls`).  A call's control calls are taken from the key that made it.
"""

from __future__ import annotations

import secrets
from collections.abc import Coroutine
from typing import Any

import attrs
import orjson
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from txgateway.auth import Principal, caller_key
from txgateway.dialects.multipart import FormParser, PartHead, boundary_of
from txgateway.dialects.openai import BadRequest, error_body
from txgateway.gateway import Gateway
from txgateway.realtime.calls import ACTIONS, CallBook, calls_url, offer_form, post, sideband_target
from txgateway.realtime.client_secrets import SESSION_TYPES, SecretRefused, caller
from txgateway.realtime.seats import TooManySessions
from txgateway.realtime.session import SessionInfo
from txgateway.realtime.upstream import UpstreamRefused, caller_status
from txgateway.upstream import UpstreamError
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import JSONResource

log = Logger()


class Answer(Exception):
    """The call is answered with this status and error (the gateway's or the provider's)."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status, self.body = status, body


def refusal(status: int, message: str, code: str, param: str | None = None) -> Answer:
    return Answer(status, error_body(status, message, code, param))


class _Parts:
    """Each part of a form, whole (an SDP offer is a few kB)."""

    def __init__(self) -> None:
        self.parts: dict[str, bytes] = {}
        self._name = ""
        self._chunks: list[bytes] = []

    def part_started(self, head: PartHead) -> None:
        self._name, self._chunks = head.name, []

    def part_data(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    def part_ended(self) -> None:
        self.parts.setdefault(self._name, b"".join(self._chunks))


def read_offer(content_type: bytes, body: bytes) -> tuple[bytes, dict[str, Any]]:
    """The SDP offer and the session config of a call's body; `BadRequest` when malformed."""
    config: Any = {}
    if content_type.split(b";")[0].strip().lower() == b"application/sdp":
        sdp = body
    else:
        boundary = boundary_of(content_type)
        if boundary is None:
            raise BadRequest("the body must be application/sdp, or multipart/form-data with "
                             "'sdp' and 'session'")
        collected = _Parts()
        parser = FormParser(boundary, collected)
        parser.feed(body)
        parser.close()
        sdp = collected.parts.get("sdp", b"")
        if "session" in collected.parts:
            try:
                config = orjson.loads(collected.parts["session"])
            except orjson.JSONDecodeError:
                raise BadRequest("'session' is not valid JSON", "session") from None
    if not sdp.strip():
        raise BadRequest("Missing required parameter: 'sdp'.", "sdp")
    if not isinstance(config, dict):
        raise BadRequest("'session' must be an object", "session")
    return sdp, config


def answer(request: Any, work: Coroutine[Any, Any, tuple[int, dict[bytes, bytes], bytes]]
           ) -> Any:
    """Answer with what ``work`` returns (status, headers, body), or its `Answer`."""

    def answered(result: tuple[int, dict[bytes, bytes], bytes]) -> None:
        status, headers, body = result
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name, value)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def failed(failure: Any) -> None:
        if failure.check(CancelledError):
            return
        if failure.check(Answer):
            answered((failure.value.status, {b"content-type": b"application/json"},
                      failure.value.body))
            return
        log.failure("{path} failed", failure, path=request.path)
        answered((500, {b"content-type": b"application/json"},
                  error_body(500, "The gateway failed to answer.", "internal_error")))

    waiting = Deferred.fromCoroutine(work)
    waiting.addCallbacks(answered, failed)
    request.notifyFinish().addErrback(lambda _: waiting.cancel())
    return NOT_DONE_YET


async def call_caller(gateway: Gateway, request: Any) -> tuple[Principal, Any]:
    try:
        principal, secret = await caller(gateway, caller_key(request))
    except SecretRefused as error:
        raise refusal(error.status, str(error), error.code, error.param) from None
    if principal is None:
        raise refusal(401, "Incorrect API key provided.", "invalid_api_key")
    return principal, secret


def relayed(status: int, body: bytes) -> Answer:
    """A provider's refusal: its own body for the caller's faults, a 502 for the gateway's."""
    passed = caller_status(status)
    if passed == status:
        return Answer(status, body)
    return refusal(passed, f"The provider refused the call with HTTP {status}.",
                   "upstream_refused")


class RealtimeCalls(JSONResource):
    """``/v1/realtime/calls`` and each call's control endpoints below it."""

    route = "realtime_calls"
    openapi = Endpoint("Realtime", {"POST": Operation(
        "Start a WebRTC call (an SDP offer, or a form of sdp and session); the answer is SDP",
        "form", "application/sdp", query={"model": "the model routed"})}, item="{call_id}")

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway
        self.book = CallBook(gateway)

    def getChild(self, path: bytes, request: Any) -> Any:
        return CallControl(self._gateway, self.book, path.decode("utf-8", "replace"))

    def render_POST(self, request: Any) -> Any:
        return answer(request, self._create(request))

    async def _create(self, request: Any) -> tuple[int, dict[bytes, bytes], bytes]:
        gateway = self._gateway
        principal, secret = await call_caller(gateway, request)
        try:
            sdp, config = read_offer(request.getHeader(b"content-type") or b"",
                                     request.content.read())
        except BadRequest as error:
            raise refusal(400, str(error), "invalid_request", error.param) from None
        issued = dict(secret.session) if secret is not None else {}
        query_model = request.args.get(b"model", [b""])[0].decode("utf-8", "replace")
        name = config.get("model") or query_model or issued.get("model")
        if issued.get("model") not in (None, name):
            raise refusal(400, f"This client secret was issued for the model "
                          f"`{issued['model']}`, not `{name}`.",
                          "client_secret_model_mismatch", "model")
        if not name:
            raise refusal(400, "Missing required parameter: 'model'.", "missing_model", "model")
        if not isinstance(name, str) or config.get("type", "realtime") not in SESSION_TYPES:
            raise refusal(400, "'session.model' must be a string and 'session.type' "
                          "'realtime' or 'transcription'", "invalid_value", "session")
        if not principal.may_use(name):
            raise refusal(403, f"This key may not use the model `{name}`.", "model_not_allowed",
                          "model")
        route = gateway.router.resolve(name)
        if route is None:
            raise refusal(404, f"The model `{name}` does not exist or you do not have access "
                               "to it.", "model_not_found", "model")
        provider = route.provider
        if calls_url(provider) is None or sideband_target(provider, "") is None:
            raise refusal(400, f"The model `{name}` is not served for WebRTC calls.",
                          "model_not_realtime", "model")
        if principal.key_id is not None and principal.limits is not None:
            admission = await gateway.limiter.admit(principal.key_id, principal.limits, 0)
            if not admission.allowed:
                raise refusal(429, admission.message, "rate_limit_exceeded")
        session_config = {"type": "realtime", **issued, **config, "model": route.model}
        info = SessionInfo(
            id="rts_" + secrets.token_hex(12), model=name, provider=provider.name,
            provider_kind=provider.kind, upstream_model=route.model,
            key_id=principal.key_id, intent=session_config["type"], beta=False,
            limits=principal.limits)
        try:
            session = await gateway.realtime.admit(info)
        except TooManySessions as error:
            raise refusal(429, str(error), "too_many_sessions") from None
        boundary = "txgateway-" + secrets.token_hex(16)
        try:
            status, headers, body = await post(
                gateway, provider, "", offer_form(sdp, session_config, boundary),
                b"multipart/form-data; boundary=" + boundary.encode())
        except UpstreamError as error:
            session.refused()
            raise refusal(502, f"The provider could not be reached: {error}",
                          "upstream_error") from None
        location = (headers.getRawHeaders(b"location") or [b""])[0]
        call_id = location.rstrip(b"/").rpartition(b"/")[2].decode("ascii", "replace")
        if status not in (200, 201) or not call_id:
            session.refused()
            raise relayed(status, body)
        session.info = attrs.evolve(info, call_id=call_id)
        try:
            await self.book.meter(session, provider, call_id)
        except UpstreamRefused as error:
            raise refusal(502, f"The gateway could not open the call's sideband: {error}",
                          "sideband_failed") from None
        return status, {b"content-type": b"application/sdp", b"location": location}, body


class CallControl(JSONResource):
    """``/v1/realtime/calls/{call_id}/{action}``: passed through, for the call's own key."""

    isLeaf = True
    openapi = Endpoint("Realtime", below={action: {"POST": Operation(
        f"{action.capitalize()} a call made through the gateway", "Object")}
        for action in ACTIONS})

    def __init__(self, gateway: Gateway, book: CallBook, call_id: str) -> None:
        super().__init__()
        self._gateway = gateway
        self._book = book
        self._id = call_id

    def render_POST(self, request: Any) -> Any:
        return answer(request, self._control(request))

    async def _control(self, request: Any) -> tuple[int, dict[bytes, bytes], bytes]:
        path = [part.decode("utf-8", "replace") for part in request.postpath]
        if len(path) != 1 or path[0] not in ACTIONS:
            raise refusal(404, f"Invalid URL (POST {request.path.decode('utf-8', 'replace')})",
                          "unknown_url")
        principal, _ = await call_caller(self._gateway, request)
        call = self._book.find(self._id)
        if call is None or call.session.info.key_id != principal.key_id:
            raise refusal(404, f"Call '{self._id}' not found.", "call_id_not_found", "call_id")
        try:
            status, headers, body = await post(
                self._gateway, call.provider, f"/{self._id}/{path[0]}", request.content.read(),
                request.getHeader(b"content-type") or b"application/json")
        except UpstreamError as error:
            raise refusal(502, f"The provider could not be reached: {error}",
                          "upstream_error") from None
        if status >= 400:
            raise relayed(status, body)
        content_type = (headers.getRawHeaders(b"content-type") or [b"application/json"])[0]
        return status, {b"content-type": content_type}, body
