"""
The operator's page at ``/admin/ui``, the API docs page at ``/docs``, and what the page reads
that the admin API did not already have: live realtime sessions as a stream of server-sent
events (``/admin/realtime/stream``) and the providers and routes with their cooldown state
(``/admin/providers``).

The pages are static files shipped in the package (``txgateway/web/static``): no build step.
The page asks for the admin token in a form and keeps it in memory; it sends it as a bearer
header, never in a URL, which is why the live stream is read with ``fetch`` rather than
``EventSource`` (which cannot send headers).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

import orjson
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from txgateway.gateway import Gateway
from txgateway.routing import Target
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import JSONResource, openai_error, write_json

log = Logger()

_STATIC = files("txgateway.web") / "static"
_TYPES = {"html": b"text/html; charset=utf-8", "js": b"text/javascript; charset=utf-8",
          "css": b"text/css; charset=utf-8", "png": b"image/png"}
#: The dashboard loads nothing from elsewhere, and runs no script inline.
_PAGE_POLICY = (b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                b"frame-ancestors 'none'")
#: Redoc's search runs in a worker made from a blob; its footer's logo from its CDN is left out.
_DOCS_POLICY = (b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                b"worker-src blob:")


class StaticFiles(JSONResource):
    """A page and the files it loads, by name, read from the package once."""

    isLeaf = True

    def __init__(self, page: str, assets: dict[str, str], policy: bytes) -> None:
        super().__init__()
        self._files = {"": page, **assets}
        self._policy = policy
        self._read: dict[str, bytes] = {}

    def render_GET(self, request: Any) -> bytes:
        name = "/".join(part.decode("utf-8", "replace") for part in request.postpath)
        path = self._files.get(name)
        if path is None:
            return openai_error(request, 404, f"No file {name!r} here.", "file_not_found")
        if not request.path.endswith(b"/") and not name:
            # Relative links in the page resolve below it.
            request.setResponseCode(301)
            request.setHeader(b"location", request.path + b"/")
            return b""
        body = self._read.get(path)
        if body is None:
            body = self._read[path] = _STATIC.joinpath(path).read_bytes()
        request.setHeader(b"content-type", _TYPES[path.rpartition(".")[2]])
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", self._policy)
        return body


class DashboardPage(StaticFiles):
    openapi = Endpoint("Dashboard", {"GET": Operation("The dashboard (a login form first)",
                                                      None, "text/html")},
                       below={"{file}": {"GET": Operation("The page's scripts and styles",
                                                          None, "text/plain")}})

    def __init__(self) -> None:
        super().__init__("dashboard.html", {
            "dashboard.js": "dashboard.js", "dashboard.css": "dashboard.css",
            "uPlot.iife.min.js": "vendor/uPlot.iife.min.js",
            "uPlot.min.css": "vendor/uPlot.min.css"}, _PAGE_POLICY)


class DocsPage(StaticFiles):
    openapi = Endpoint("Gateway", {"GET": Operation("This API's reference (Redoc)", None,
                                                    "text/html")},
                       below={"{file}": {"GET": Operation("The page's script", None,
                                                          "text/plain")}})

    def __init__(self) -> None:
        super().__init__("docs.html", {"redoc.standalone.js": "vendor/redoc.standalone.js"},
                         _DOCS_POLICY)


class Providers(JSONResource):
    """``GET /admin/providers``: each provider, and each route's targets with their state."""

    isLeaf = True
    openapi = Endpoint("Admin", {"GET": Operation("Providers, and routes with their targets' "
                                                  "cooldown state")})

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def render_GET(self, request: Any) -> bytes:
        gateway = self._gateway
        router, providers = gateway.router, gateway.providers
        routes = []
        for route in gateway.config.models:
            targets = []
            for target in route.all_targets():
                provider = providers[target.provider]
                targets.append({
                    "provider": target.provider, "model": target.model,
                    "weight": target.weight, "priority": target.priority,
                    "cooling_down": router.cooling_down(
                        Target(provider, target.model or route.name))})
            routes.append({"name": route.name, "targets": targets})
        return write_json(request, 200, orjson.dumps({
            "providers": [{"name": name, "kind": provider.kind}
                          for name, provider in providers.items()],
            "models": routes}))


class LiveSessions(JSONResource):
    """
    ``GET /admin/realtime/stream``: server-sent events, one ``sessions`` event a second with
    every active session's tally and the latest ended ones, of every worker.
    """

    isLeaf = True
    openapi = Endpoint("Admin", {"GET": Operation(
        "Realtime sessions, live: an event a second", None, "text/event-stream")})
    interval = 1.0
    recent_shown = 20

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def render_GET(self, request: Any) -> Any:
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        _SessionFeed(self._gateway, request, self.interval, self.recent_shown).start()
        return NOT_DONE_YET


@implementer(IPushProducer)
class _SessionFeed:
    """
    Writes the sessions each ``interval``; paused while the client reads slower.  Under
    ``--workers`` they are gathered from every worker: a tick while the last gathering is
    still out is skipped, so the parent is asked at most once an interval per stream.
    """

    def __init__(self, gateway: Gateway, request: Any, interval: float, recent: int) -> None:
        self._view = gateway.view
        self._request = request
        self._interval = interval
        self._recent = recent
        self._loop = LoopingCall(self._send)
        self._loop.clock = gateway.reactor
        self._stopped = False
        self._asking = False

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addBoth(lambda _: self.stopProducing())
        self.resumeProducing()

    def _send(self) -> None:
        if self._asking:
            return
        self._asking = True
        self._view.sessions().addCallback(self._write).addErrback(self._failed)

    def _write(self, sessions: dict[str, list[dict[str, Any]]]) -> None:
        self._asking = False
        if self._stopped:
            return
        snapshot = {"active": sessions["active"], "recent": sessions["recent"][:self._recent]}
        self._request.write(b"event: sessions\ndata: " + orjson.dumps(snapshot) + b"\n\n")

    def _failed(self, failure: Any) -> None:
        """The sessions could not be gathered (the parent is gone): the stream ends."""
        self._asking = False
        log.failure("the live realtime sessions could not be gathered", failure)
        if not self._stopped:
            self.stopProducing()
            self._request.finish()

    def pauseProducing(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def resumeProducing(self) -> None:
        if not self._loop.running and not self._stopped:
            self._loop.start(self._interval, now=True)

    def stopProducing(self) -> None:
        self._stopped = True
        self.pauseProducing()
