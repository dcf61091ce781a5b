"""Liveness (``/health``), readiness (``/health/ready``) and ``/metrics``."""

from __future__ import annotations

from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import GatewayResource, JSONResource, answer_later, write_json

log = Logger()


class Health(JSONResource):
    """200 while the process serves HTTP at all."""

    openapi = Endpoint("Operations", {"GET": Operation("Liveness")})

    def render_GET(self, request: Any) -> bytes:
        return write_json(request, 200, b'{"status":"ok"}')


class Ready(GatewayResource):
    """
    200 when the gateway can do its work: it is not draining for a stop, it has providers
    and routes to send calls to, and its store answers.  Each check is listed, so an operator
    sees which one failed.  A limiter that does not answer (Redis down) makes the gateway
    "degraded", still 200: the limiter fails open and calls are served, so a load balancer
    must keep sending them.
    """

    openapi = Endpoint("Operations", {"GET": Operation("Readiness, check by check")})

    isLeaf = True
    #: How long the store and limiter probes may take before they count as down.
    probe_timeout = 2.0

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
        ready = all(value for name, value in checks.items() if name != "limiter")
        status = ("not ready" if not ready else "ready" if limiter else "degraded")
        return (200 if ready else 503), {
            "status": status, "checks": checks, "ledger_pending": gateway.ledger.pending}

    async def _probe(self, check: Deferred[bool]) -> bool:
        try:
            return bool(await check.addTimeout(self.probe_timeout, self._gateway.reactor))
        except Exception:
            return False


class Metrics(GatewayResource):
    """The Prometheus text exposition of the whole gateway (every worker's, summed)."""

    openapi = Endpoint("Operations", {"GET": Operation("Prometheus metrics", None,
                                                       "text/plain")})

    isLeaf = True

    def render_GET(self, request: Any) -> Any:
        waiting = self._gateway.view.metrics()
        waiting.addCallbacks(lambda text: _answer(request, 200, text), lambda failure: _answer(
            request, 500, b"the metrics could not be gathered\n", failure))
        request.notifyFinish().addErrback(lambda _: waiting.cancel())
        return NOT_DONE_YET


def _answer(request: Any, status: int, body: bytes, failure: Any = None) -> None:
    if failure is not None:
        if failure.check(CancelledError):  # the client left
            return
        log.failure("/metrics failed", failure)
    request.setResponseCode(status)
    request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()
