"""
The admin API, behind the bearer token of the config's ``admin.token`` (off without one):

- ``GET /admin/realtime/sessions`` and ``GET /admin/realtime/sessions/{id}``;
- virtual keys (`txgateway.web.admin_keys`): ``/admin/keys`` and ``/admin/keys/{id}``;
- ``GET /admin/usage`` from the ledger, and ``POST /admin/reload``;
- the dashboard at ``/admin/ui`` (the one page served without the token: it asks for it),
  and what it reads besides (`txgateway.web.dashboard`).
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

import orjson
from twisted.web.resource import Resource

from txgateway.dialects.openai import error_body
from txgateway.gateway import Gateway
from txgateway.web.admin_keys import Keys
from txgateway.web.dashboard import DashboardPage, LiveSessions, Providers
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import (
    Collection,
    GatewayResource,
    Item,
    JSONResource,
    answer_later,
    openai_error,
    write_json,
)


class Admin(GatewayResource):
    """Checks the admin token for everything below it."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        realtime = JSONResource()
        realtime.putChild(b"sessions", RealtimeSessions(gateway))
        realtime.putChild(b"stream", LiveSessions(gateway))
        self.putChild(b"realtime", realtime)
        self.putChild(b"keys", Keys(gateway))
        self.putChild(b"usage", UsageReport(gateway))
        self.putChild(b"reload", Reload(gateway))
        self.putChild(b"providers", Providers(gateway))
        self.putChild(b"ui", DashboardPage())

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        token = self._gateway.config.admin.token.encode()  # a reload may change it
        if not token:
            return _Refusal(404, "The admin API is off: set admin.token in the config.",
                            "admin_disabled")
        if path == b"ui":  # the page itself asks for the token
            return self.children[path]
        sent = request.getHeader(b"authorization") or b""
        if not hmac.compare_digest(sent, b"Bearer " + token):
            return _Refusal(401, "The admin API needs the admin token as a bearer token.",
                            "invalid_admin_token")
        return super().getChildWithDefault(path, request)


class _OneSession(Item):
    openapi = Endpoint("Admin", {"GET": Operation("Retrieve a realtime session")})

    def render_GET(self, request: Any) -> Any:
        session = self._gateway.realtime.find(self._id)
        if session is not None:  # this worker's: no need to ask the others
            return write_json(request, 200, orjson.dumps(session.as_json()))
        return answer_later(request, self._find())

    async def _find(self) -> tuple[int, Any]:
        sessions = await self._gateway.view.sessions()
        for session in [*sessions["active"], *sessions["recent"]]:
            if session["id"] == self._id:
                return 200, session
        return 404, error_body(404, f"No realtime session {self._id!r}.", "session_not_found")


class RealtimeSessions(Collection):
    """Active and recently ended realtime sessions, each with its tally (of every worker)."""

    openapi = Endpoint("Admin", {"GET": Operation("List realtime sessions")},
                       item="{session_id}")
    item = _OneSession

    def render_GET(self, request: Any) -> Any:
        return answer_later(request, self._list())

    async def _list(self) -> tuple[int, Any]:
        return 200, await self._gateway.view.sessions()


class _Refusal(Resource):
    isLeaf = True

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__()
        self._status, self._message, self._code = status, message, code

    def render(self, request: Any) -> bytes:
        if self._status == 401:
            request.setHeader(b"www-authenticate", b"Bearer")
        return openai_error(request, self._status, self._message, self._code)


class UsageReport(GatewayResource):
    """
    ``GET /admin/usage?group_by=key|model|provider&from=&to=&bucket=hour|day``: the ledger's
    sums.  ``from`` and ``to`` are unix seconds or ISO 8601 times (UTC unless they say).
    """

    openapi = Endpoint("Admin", {"GET": Operation("Usage from the ledger, grouped", None,
                                                  "List", {
        "group_by": "key, model (the default) or provider",
        "bucket": "hour or day (UTC); none sums the whole range",
        "from": "unix seconds or an ISO 8601 time (UTC unless it says)",
        "to": "unix seconds or an ISO 8601 time, excluded"})})

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        args = {name.decode(): values[-1].decode() for name, values in request.args.items()}
        group_by = args.get("group_by", "model")
        bucket = args.get("bucket") or None
        if group_by not in ("key", "model", "provider"):
            return openai_error(request, 400, "group_by must be key, model or provider.",
                                "invalid_group_by", "group_by")
        if bucket not in (None, "hour", "day"):
            return openai_error(request, 400, "bucket must be hour or day.", "invalid_bucket",
                                "bucket")
        try:
            start, end = _time(args.get("from")), _time(args.get("to"))
        except ValueError as error:
            return openai_error(request, 400, str(error), "invalid_time")
        return answer_later(request, self._report(group_by, start, end, bucket))

    async def _report(self, group_by: str, start: float | None, end: float | None,
                      bucket: str | None) -> tuple[int, Any]:
        rows = await self._gateway.store.usage_report(group_by, start, end, bucket)
        return 200, {"object": "list", "group_by": group_by, "bucket": bucket, "from": start,
                     "to": end, "data": rows}


def _time(value: str | None) -> float | None:
    """Unix seconds, or an ISO 8601 date or time (UTC when it names no zone)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither unix seconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


class Reload(GatewayResource):
    """``POST /admin/reload``: serve the config file as it is now, or say why not."""

    openapi = Endpoint("Admin", {"POST": Operation("Reload the config file")})

    isLeaf = True

    def render_POST(self, request: Any) -> Any:
        return answer_later(request, self._reload())

    async def _reload(self) -> tuple[int, Any]:
        problems = await self._gateway.view.reload()
        if problems:
            return 400, {"error": {
                "message": "The config was not reloaded: " + "; ".join(problems),
                "type": "invalid_request_error", "param": None, "code": "invalid_config",
                "problems": problems}}
        return 200, b'{"status":"reloaded"}'
