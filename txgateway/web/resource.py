"""Base resources that answer in JSON, never with Twisted's HTML pages."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from txgateway.accounting import Outcome
from txgateway.dialects.openai import error_body
from txgateway.web import overload

log = Logger()


def write_json(request: Any, status: int, body: bytes) -> bytes:
    """Set the status and JSON headers; return the body for ``render_*`` to hand back."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def openai_error(request: Any, status: int, message: str, code: str | None = None,
                 param: str | None = None) -> bytes:
    return write_json(request, status, error_body(status, message, code, param))


def answer_later(request: Any, work: Coroutine[Any, Any, tuple[int, Any]]) -> Any:
    """
    Answer with what ``work`` returns, ``(status, document)`` (JSON-able, or JSON bytes),
    once it has; a failure is logged and answered with a 500.  For ``render_*`` methods that
    must wait on a store.
    """

    def answer(result: tuple[int, Any]) -> None:
        status, document = result
        body = document if isinstance(document, bytes) else orjson.dumps(document)
        request.write(write_json(request, status, body))
        request.finish()

    def failed(failure: Any) -> None:
        if failure.check(CancelledError):  # the client left
            return
        log.failure("{path} failed", failure, path=request.path)
        request.write(openai_error(request, 500, "The gateway failed to answer.",
                                   "internal_error"))
        request.finish()

    waiting = Deferred.fromCoroutine(work)
    waiting.addCallbacks(answer, failed)
    request.notifyFinish().addErrback(lambda _: waiting.cancel())
    return NOT_DONE_YET


class JSONResource(Resource):
    """
    A resource whose unknown children and unsupported methods get JSON errors, in the
    dialect of its `error_body` (OpenAI's unless a subclass speaks another).
    """

    def error_body(self, status: int, message: str, code: str | None = None,
                   param: str | None = None) -> bytes:
        return error_body(status, message, code, param)

    def getChild(self, path: bytes, request: Any) -> Resource:
        return NotFound(self.error_body)

    def render(self, request: Any) -> Any:
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, "render_" + ("GET" if method == "HEAD" else method), None)
        if handler is None:
            allowed = sorted(name[7:] for name in dir(self)
                             if name.startswith("render_") and name != "render_HEAD")
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return write_json(request, 405, self.error_body(
                405,
                f"{method} is not allowed on "
                f"{request.path.decode('ascii', 'replace')}; use {', '.join(allowed)}",
                "method_not_allowed",
            ))
        return handler(request)


class GatewayResource(JSONResource):
    """A JSON resource that answers from the gateway's parts (``self._gateway``)."""

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self._gateway = gateway


class Item(GatewayResource):
    """One item of a `Collection` (its id ``self._id``), with what its path names below it."""

    isLeaf = True

    def __init__(self, gateway: Any, item_id: str) -> None:
        super().__init__(gateway)
        self._id = item_id


class Collection(GatewayResource):
    """A resource whose children are its items, one an id: each an `item`."""

    item: type[Item]

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self.item(self._gateway, path.decode("utf-8", "replace"))


class NotFound(Resource):
    """An unknown URL, answered with ``error_body`` (its parent's dialect)."""

    isLeaf = True

    def __init__(self, error_body: Callable[..., bytes] = error_body) -> None:
        super().__init__()
        self._error_body = error_body

    def render(self, request: Any) -> bytes:
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("ascii", "replace")
        return write_json(request, 404, self._error_body(
            404, f"Invalid URL ({method} {path})", "unknown_url"))


class Root(JSONResource):
    """
    The tree's root, which also accounts for the requests the site refuses before any
    resource sees them (a body over ``max_body_bytes``), so that they count like any other.
    """

    def __init__(self, accountant: Any, max_in_flight: int = 0) -> None:
        super().__init__()
        self._accountant = accountant
        self._max_in_flight = max_in_flight

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        limit = self._max_in_flight
        if not overload.is_overloaded(self._accountant, limit, path):
            return super().getChildWithDefault(path, request)
        self._account(request.path, 503, overload.message(limit))
        endpoint = endpoint_at(self, request.path)
        return overload.Overloaded(limit, getattr(endpoint, "error_body", error_body))

    def refused(self, request: Any, status: int, message: str) -> None:
        self._account(request.path, status, message)

    def _account(self, path: bytes, status: int, message: str) -> None:
        self._accountant.finish(self._accountant.start(route_of(self, path)),
                                Outcome(status, message))


def route_of(root: Resource, path: bytes) -> str:
    """
    The route name of the endpoint ``path`` leads to, following the tree's fixed children
    only (no ``getChild``: nothing runs); "unknown" when it leads to none.
    """
    return getattr(endpoint_at(root, path), "route", "") or "unknown"


def endpoint_at(root: Resource, path: bytes) -> Resource | None:
    """The resource ``path`` leads to by the tree's fixed children; None when none."""
    resource = root
    for segment in path.split(b"/")[1:]:
        if resource.isLeaf:
            break
        resource = resource.children.get(segment)
        if resource is None:
            return None
    return resource
