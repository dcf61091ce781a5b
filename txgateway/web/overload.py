"""
Overload admission: past ``max_in_flight`` calls under way, a new call is answered 503 with
``Retry-After`` at once, before its body is read or any work is queued, so that a burst
costs the gateway a status line per refused call instead of unbounded memory.
"""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource

from txgateway.dialects.openai import error_body

#: The paths never refused: operators and load balancers must still see the gateway.
EXEMPT = frozenset((b"health", b"metrics", b"admin"))
RETRY_AFTER = b"1"


class Overloaded(Resource):
    """The answer to a call the gateway has no room for."""

    isLeaf = True

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    def render(self, request: Any) -> bytes:
        body = error_body(503, message(self._limit), "overloaded")
        request.setResponseCode(503)
        request.setHeader(b"retry-after", RETRY_AFTER)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body


def message(limit: int) -> str:
    return f"The gateway is serving its limit of {limit} calls at once; retry shortly."


def overloaded(accountant: Any, limit: int, segment: bytes) -> Resource | None:
    """The refusal when ``limit`` calls are under way (0: no limit), else None."""
    if limit and accountant.in_flight >= limit and segment not in EXEMPT:
        return Overloaded(limit)
    return None
