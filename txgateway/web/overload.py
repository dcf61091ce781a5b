"""
Overload admission: past ``max_in_flight`` calls under way, a new call is answered 503 with
``Retry-After`` at once, before any endpoint works on it or holds it, so that a burst costs
the gateway one short answer per refused call instead of unbounded memory and queueing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.resource import Resource

#: The paths never refused: operators and load balancers must still see the gateway.
EXEMPT = frozenset((b"health", b"metrics", b"admin"))
RETRY_AFTER = b"1"


class Overloaded(Resource):
    """The answer to a call the gateway has no room for."""

    isLeaf = True

    def __init__(self, limit: int, error_body: Callable[..., bytes]) -> None:
        super().__init__()
        self._limit = limit
        self._error_body = error_body  # the dialect of the endpoint called

    def render(self, request: Any) -> bytes:
        body = self._error_body(503, message(self._limit), "overloaded")
        request.setResponseCode(503)
        request.setHeader(b"retry-after", RETRY_AFTER)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"content-length", b"%d" % len(body))
        return body


def message(limit: int) -> str:
    return f"The gateway is serving its limit of {limit} calls at once; retry shortly."


def is_overloaded(accountant: Any, limit: int, segment: bytes) -> bool:
    """Whether ``limit`` calls are under way (0: no limit) for a call below ``segment``."""
    return bool(limit) and accountant.in_flight >= limit and segment not in EXEMPT
