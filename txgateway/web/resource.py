"""Base resources that answer in JSON, never with Twisted's HTML pages."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource

from txgateway.dialects.openai import error_body


def write_json(request: Any, status: int, body: bytes) -> bytes:
    """Set the status and JSON headers; return the body for ``render_*`` to hand back."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def openai_error(request: Any, status: int, message: str, code: str | None = None,
                 param: str | None = None) -> bytes:
    return write_json(request, status, error_body(status, message, code, param))


class JSONResource(Resource):
    """A resource whose unknown children and unsupported methods get OpenAI-style JSON errors."""

    def getChild(self, path: bytes, request: Any) -> Resource:
        return NotFound()

    def render(self, request: Any) -> Any:
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, "render_" + ("GET" if method == "HEAD" else method), None)
        if handler is None:
            allowed = sorted(name[7:] for name in dir(self)
                             if name.startswith("render_") and name != "render_HEAD")
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return openai_error(
                request, 405,
                f"{method} is not allowed on "
                f"{request.path.decode('ascii', 'replace')}; use {', '.join(allowed)}",
                "method_not_allowed",
            )
        return handler(request)


class NotFound(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("ascii", "replace")
        return openai_error(request, 404, f"Invalid URL ({method} {path})", "unknown_url")
