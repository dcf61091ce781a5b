"""Liveness (``/health``), readiness (``/health/ready``) and ``/metrics``."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred, gatherResults

from txgateway.gateway import Gateway
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import JSONResource, answer_later, write_json


class Health(JSONResource):
    """200 while the process serves HTTP at all."""

    openapi = Endpoint("Operations", {"GET": Operation("Liveness")})

    def render_GET(self, request: Any) -> bytes:
        return write_json(request, 200, b'{"status":"ok"}')


class Ready(JSONResource):
    """
    200 when the gateway can do its work: it is not draining for a stop, it has providers
    and routes to send calls to, and its store and limiter answer.  Each check is listed, so
    an operator sees which one failed.
    """

    openapi = Endpoint("Operations", {"GET": Operation("Readiness, check by check")})

    isLeaf = True
    #: How long the store and limiter probes may take before they count as down.
    probe_timeout = 2.0

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def render_GET(self, request: Any) -> Any:
        return answer_later(request, self._checks())

    async def _checks(self) -> tuple[int, Any]:
        gateway = self._gateway
        store, limiter = await gatherResults([
            Deferred.fromCoroutine(self._probe(gateway.store.check())),
            Deferred.fromCoroutine(self._probe(gateway.limiter.check()))])
        checks = {
            "accepting": not gateway.draining,
            "providers": bool(gateway.providers),
            "routes": bool(gateway.config.models),
            "store": store,
            "limiter": limiter,
        }
        ready = all(checks.values())
        return (200 if ready else 503), {
            "status": "ready" if ready else "not ready", "checks": checks,
            "ledger_pending": gateway.ledger.pending}

    async def _probe(self, check: Deferred[bool]) -> bool:
        try:
            return bool(await check.addTimeout(self.probe_timeout, self._gateway.reactor))
        except Exception:
            return False


class Metrics(JSONResource):
    """The Prometheus text exposition, collected in-process (no thread hop)."""

    openapi = Endpoint("Operations", {"GET": Operation("Prometheus metrics", None,
                                                       "text/plain")})

    isLeaf = True

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def render_GET(self, request: Any) -> bytes:
        gateway = self._gateway
        gateway.metrics.ledger_pending(gateway.ledger.pending)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(gateway.metrics.registry)
