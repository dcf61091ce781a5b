"""
The endpoints not yet on the call pipeline (`txgateway.web.runner`): each runs its call in
its own `ProxyEndpoint.proxy`, within the runner's `attempt` and `settle`.  It goes
once the last family has a codec.
"""

from __future__ import annotations

from typing import Any

from txgateway.accounting import Exchange
from txgateway.admission import Refusal  # noqa: F401 (still imported from here)
from txgateway.dialects.errors import upstream_error
from txgateway.providers import ITranslatingProvider
from txgateway.routing import Target
from txgateway.upstream import UpstreamCall
from txgateway.web.runner import (
    ModelEndpoint,
    attempt,
    finish,
    pass_retry_after,
    settle,
)


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

        await settle(self._gateway, request, exchange, call, exchange, work(),
                     self.error_body)


def is_event_stream(response: Any, provider: Any = None) -> bool:
    """
    Whether ``response`` is a stream to relay: SSE, or the content type a translating
    ``provider`` streams in when it says (``stream_content_type``, e.g. AWS event streams).
    """
    expected = (provider.stream_content_type if ITranslatingProvider.providedBy(provider)
                else b"text/event-stream")
    content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
    return content_type.startswith(expected)
