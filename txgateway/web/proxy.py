"""
The endpoints not yet on the call pipeline (`txgateway.web.runner`): each runs its call in
its own `ProxyEndpoint.proxy`, within this module's attempt loop and `answered`.  It goes
once the last family has a codec.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.logger import Logger

from txgateway.accounting import Exchange
from txgateway.admission import Refusal
from txgateway.dialects.errors import upstream_error
from txgateway.dialects.openai import BadRequest
from txgateway.dialects.openai import error_body as openai_error_body
from txgateway.gateway import Gateway
from txgateway.providers import ITranslatingProvider
from txgateway.routing import Target
from txgateway.upstream import (
    UpstreamCall,
    UpstreamError,
)
from txgateway.web.relay import CLIENT_CLOSED
from txgateway.web.runner import (
    ModelEndpoint,
    attempt,
    finish,
    pass_retry_after,
)

log = Logger()


class ProxyEndpoint(ModelEndpoint):
    """An endpoint not yet on the runner (`txgateway.web.runner`): its own `proxy`."""

    def answer_error(self, request: Any, exchange: Exchange, response: Any,
                     call: UpstreamCall, body: bytes) -> None:
        """An upstream's answer that is no success, said in the caller's dialect."""
        status, body = upstream_error(self.errors, response.code, body,
                                      self._gateway.redactor)
        exchange.status = status
        exchange.error = f"upstream status {response.code}"
        pass_retry_after(request, response)
        finish(request, call, status, body)

    async def proxy(self, request: Any, exchange: Exchange, parsed: Any, target: Target,
                    call: UpstreamCall) -> None:
        """
        Send the call to ``target`` and answer the client; errors are turned into answers by
        the caller.  Nothing may be written to the client before ``call.send`` returned: a
        failure before then falls back to the route's next target.
        """
        raise NotImplementedError

    async def run(self, request: Any, exchange: Exchange, parsed: Any, size: int,
                  call: UpstreamCall) -> None:
        async def work() -> None:
            plan = await self.admit(request, exchange, parsed, size)
            await attempt(self._gateway, request, exchange, plan, call,
                          lambda target: self.proxy(request, exchange, parsed, target, call))

        await answered(self._gateway, request, exchange, call, work(), self.error_body)


async def answered(gateway: Gateway, request: Any, exchange: Exchange, call: UpstreamCall,
                   work: Awaitable[None],
                   error_body: Callable[..., bytes] = openai_error_body) -> None:
    """
    Await ``work``, which answers the request, and finish the exchange.  What it raises is
    answered in ``error_body``'s dialect: a refusal or bad input with its status, an upstream
    fault with its own, a bug with 500 (logged); a client that left gets nothing, and an answer
    already begun is ended as it stands.
    """

    def fail(status: int, message: str, code: str | None, param: str | None = None) -> None:
        exchange.status, exchange.error = status, message
        if call.aborted or request.finished:
            return
        if request.startedWriting:
            request.finish()
        else:
            finish(request, call, status, error_body(status, message, code, param))

    try:
        await work
    except Refusal as refusal:
        fail(refusal.status, str(refusal), refusal.code, refusal.param)
    except BadRequest as error:
        fail(400, str(error), None, error.param)
    except CancelledError:
        exchange.status = CLIENT_CLOSED
        exchange.error = "the client disconnected"
    except UpstreamError as error:
        fail(error.status, str(error), error.code)
    except Exception:
        log.failure("{route} for {model} via {provider} failed", route=exchange.route,
                    model=exchange.model, provider=exchange.provider)
        fail(500, "the gateway failed to answer", "internal_error")
    finally:
        gateway.accountant.finish(exchange)


def is_event_stream(response: Any, provider: Any = None) -> bool:
    """
    Whether ``response`` is a stream to relay: SSE, or the content type a translating
    ``provider`` streams in when it says (``stream_content_type``, e.g. AWS event streams).
    """
    expected = (provider.stream_content_type if ITranslatingProvider.providedBy(provider)
                else b"text/event-stream")
    content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return content_type.startswith(expected)
