"""
What every proxying endpoint shares, whatever the caller's dialect: one exchange per request,
routing by model, the upstream call (aborted when the client leaves), and errors and the
final accounting done once.

An endpoint subclasses `ProxyEndpoint` and says how its dialect parses a request
(`parse`), writes an error (`error_body`), and what the call does (`proxy`).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from txgateway.accounting import Exchange
from txgateway.dialects.openai import BadRequest
from txgateway.gateway import Gateway
from txgateway.routing import Target
from txgateway.upstream import UpstreamCall, UpstreamError
from txgateway.web.relay import CLIENT_CLOSED
from txgateway.web.resource import JSONResource, write_json

log = Logger()


class ProxyEndpoint(JSONResource):
    isLeaf = True
    #: The route name in metrics and the access log.
    route = ""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def parse(self, raw: bytes) -> Any:
        """The caller's request, with ``model`` and ``stream``; raises `BadRequest`."""
        raise NotImplementedError

    def error_body(self, status: int, message: str, code: str | None = None,
                   param: str | None = None) -> bytes:
        """An error in the caller's dialect."""
        raise NotImplementedError

    def unknown_model(self, model: str) -> str:
        return f"The model `{model}` does not exist or you do not have access to it."

    async def proxy(self, request: Any, exchange: Exchange, parsed: Any, target: Target,
                    call: UpstreamCall) -> None:
        """Send the call and answer the client; errors are turned into answers by the caller."""
        raise NotImplementedError

    def render_POST(self, request: Any) -> Any:
        gateway = self._gateway
        exchange = gateway.accountant.start(self.route)
        try:
            parsed = self.parse(request.content.getvalue())
        except BadRequest as error:
            return self._refuse(request, exchange, 400, str(error), None, error.param)
        exchange.model = parsed.model
        exchange.stream = parsed.stream
        target = gateway.router.resolve(parsed.model)
        if target is None:
            return self._refuse(request, exchange, 404, self.unknown_model(parsed.model),
                                "model_not_found", "model")
        exchange.provider = target.provider.name
        exchange.provider_kind = target.provider.kind
        exchange.upstream_model = target.model
        call = UpstreamCall(gateway.reactor, gateway.config.upstream)
        request.notifyFinish().addErrback(lambda _: call.abort())
        Deferred.fromCoroutine(self._guarded(request, exchange, parsed, target, call))
        return NOT_DONE_YET

    def _refuse(self, request: Any, exchange: Exchange, status: int, message: str,
                code: str | None, param: str | None) -> bytes:
        exchange.status = status
        exchange.error = message
        self._gateway.accountant.finish(exchange)
        return write_json(request, status, self.error_body(status, message, code, param))

    async def _guarded(self, request: Any, exchange: Exchange, parsed: Any, target: Target,
                       call: UpstreamCall) -> None:
        try:
            await self.proxy(request, exchange, parsed, target, call)
        except CancelledError:
            exchange.status = CLIENT_CLOSED
            exchange.error = "the client disconnected"
        except UpstreamError as error:
            exchange.status = error.status
            exchange.error = str(error)
            finish(request, call, error.status,
                   self.error_body(error.status, str(error), error.code))
        except Exception:
            log.failure("{route} for {model} failed", route=self.route, model=parsed.model)
            exchange.status = 500
            exchange.error = "internal error"
            finish(request, call, 500,
                   self.error_body(500, "the gateway failed to answer", "internal_error"))
        finally:
            self._gateway.accountant.finish(exchange)


def finish(request: Any, call: UpstreamCall, status: int, body: bytes) -> None:
    """Answer with a JSON body, unless the client has already gone."""
    if call.aborted:
        return
    request.write(write_json(request, status, body))
    request.finish()


def pass_retry_after(request: Any, response: Any) -> None:
    """The caller's SDK honours Retry-After when it backs off: keep the upstream's."""
    retry_after = response.headers.getRawHeaders(b"retry-after")
    if retry_after:
        request.setHeader(b"retry-after", retry_after[0])


def is_event_stream(response: Any) -> bool:
    content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return content_type.startswith(b"text/event-stream")
