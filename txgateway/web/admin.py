"""
The admin API, behind the bearer token of the config's ``admin.token`` (off without one):
``GET /admin/realtime/sessions`` and ``GET /admin/realtime/sessions/{id}``.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from twisted.web.resource import Resource

from txgateway.gateway import Gateway
from txgateway.web.resource import JSONResource, openai_error, write_json


class Admin(JSONResource):
    """Checks the admin token for everything below it."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._token = gateway.config.admin.token.encode()
        realtime = JSONResource()
        realtime.putChild(b"sessions", RealtimeSessions(gateway))
        self.putChild(b"realtime", realtime)

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        if not self._token:
            return _Refusal(404, "The admin API is off: set admin.token in the config.",
                            "admin_disabled")
        sent = request.getHeader(b"authorization") or b""
        if not hmac.compare_digest(sent.encode() if isinstance(sent, str) else sent,
                                   b"Bearer " + self._token):
            return _Refusal(401, "The admin API needs the admin token as a bearer token.",
                            "invalid_admin_token")
        return super().getChildWithDefault(path, request)


class RealtimeSessions(JSONResource):
    """Active and recently ended realtime sessions, each with its tally."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._book = gateway.realtime

    def getChild(self, path: bytes, request: Any) -> Resource:
        return _OneSession(self._book, path.decode("ascii", "replace"))

    def render_GET(self, request: Any) -> bytes:
        book = self._book
        return write_json(request, 200, orjson.dumps({
            "active": [session.as_json() for session in book.active()],
            "recent": [session.as_json() for session in book.recent()],
        }))


class _OneSession(JSONResource):
    isLeaf = True

    def __init__(self, book: Any, session_id: str) -> None:
        super().__init__()
        self._book = book
        self._id = session_id

    def render_GET(self, request: Any) -> bytes:
        session = self._book.find(self._id)
        if session is None:
            return openai_error(request, 404, f"No realtime session {self._id!r}.",
                                "session_not_found")
        return write_json(request, 200, orjson.dumps(session.as_json()))


class _Refusal(Resource):
    isLeaf = True

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__()
        self._status, self._message, self._code = status, message, code

    def render(self, request: Any) -> bytes:
        if self._status == 401:
            request.setHeader(b"www-authenticate", b"Bearer")
        return openai_error(request, self._status, self._message, self._code)
