"""Liveness (``/health``), readiness (``/health/ready``) and ``/metrics``."""

from __future__ import annotations

from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from txgateway.gateway import Gateway
from txgateway.web.resource import JSONResource, write_json


class Health(JSONResource):
    """200 while the process serves HTTP at all."""

    def render_GET(self, request: Any) -> bytes:
        return write_json(request, 200, b'{"status":"ok"}')


class Ready(JSONResource):
    """
    200 when the gateway can do its work: it is not draining for a stop, and it has
    providers and routes to send calls to.  Each check is listed, so an operator sees which
    one failed.
    """

    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def render_GET(self, request: Any) -> bytes:
        gateway = self._gateway
        checks = {
            "accepting": not gateway.draining,
            "providers": bool(gateway.providers),
            "routes": bool(gateway.config.models),
        }
        ready = all(checks.values())
        return write_json(request, 200 if ready else 503, orjson.dumps(
            {"status": "ready" if ready else "not ready", "checks": checks}))


class Metrics(JSONResource):
    """The Prometheus text exposition, collected in-process (no thread hop)."""

    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._gateway.metrics.registry)
