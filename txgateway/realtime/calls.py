"""
WebRTC calls (``POST /v1/realtime/calls``): the media goes peer to peer between the caller and
the provider, so the gateway meters a call through the sideband WebSocket it opens itself
(``/v1/realtime?call_id=...``, with the provider's key).  The sideband is an ordinary
`Session` whose caller leg is the gateway (`CallLeg`): tallied, guarded (maximum duration,
token budget), listed and counted like any session; its key's budget is checked at each usage
report.  Ending it from the gateway's side hangs the call up (``.../hangup``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from zope.interface import implementer

from txgateway.providers import (
    IPassthroughProvider,
    RealtimeTarget,
    UpstreamRequest,
    realtime_target,
)
from txgateway.realtime.budget import key_budget
from txgateway.realtime.legs import ILeg
from txgateway.realtime.session import Session
from txgateway.realtime.upstream import dial
from txgateway.upstream import UpstreamCall

log = Logger()

#: What the provider's call endpoints take beside a call: ``.../{call_id}/{action}``.
ACTIONS = ("accept", "reject", "refer", "hangup")


def calls_url(provider: Any) -> str | None:
    """The provider's ``/realtime/calls`` URL; None when it serves no calls."""
    if provider.kind != "openai" or not IPassthroughProvider.providedBy(provider):
        return None
    return provider.passthrough_base.rstrip("/") + "/realtime/calls"


def sideband_target(provider: Any, call_id: str) -> RealtimeTarget | None:
    """The provider's realtime WebSocket for the call, with its own key."""
    target = realtime_target(provider, None, "realtime", False)
    if target is None or target.local is not None:
        return None
    return attrs.evolve(target, url=target.url.partition("?")[0] + "?"
                        + urlencode({"call_id": call_id}))


async def post(gateway: Any, provider: Any, path: str, body: bytes,
               content_type: bytes) -> tuple[int, Headers, bytes]:
    """POST ``body`` to the provider's ``/realtime/calls`` + ``path``; status, headers, body."""
    headers = Headers({b"content-type": [content_type], b"user-agent": [b"txgateway"]})
    for name, value in provider.passthrough_headers.items():
        if value:
            headers.setRawHeaders(name.encode(), [value.encode()])
    url = (calls_url(provider) or "") + path
    call = UpstreamCall(gateway.reactor, gateway.config.upstream)
    response = await call.send(provider.agent, UpstreamRequest(b"POST", url.encode(), headers,
                                                               body))
    return response.code, response.headers, await call.read(response)


@attrs.frozen
class Call:
    """A call the gateway meters, while its sideband is open."""

    id: str
    provider: Any
    session: Session


class CallBook:
    """The metered calls by id, for their control endpoints to find."""

    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway
        self.clock = gateway.reactor
        self._calls: dict[str, Call] = {}

    def find(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    async def meter(self, session: Session, provider: Any, call_id: str) -> None:
        """
        Open the call's sideband as ``session``'s upstream; when it cannot be opened, the call
        (which would go unbilled) is hung up and `UpstreamRefused` raised.
        """
        gateway = self._gateway
        target = sideband_target(provider, call_id)
        assert target is not None, "checked before the call was made"
        call = Call(call_id, provider, session)
        try:
            upstream = await dial(gateway.reactor, target, session, gateway.config.realtime,
                                  gateway.config.upstream.connect_timeout)
        except Exception:
            session.refused()
            self.hang_up(call)
            raise
        session.upstream_ready(upstream)
        limits = session.info.limits
        spent = 0.0
        if limits is not None and limits.budget_usd > 0:
            spent = await gateway.limiter.spent(session.info.key_id, limits)
        self._calls[call_id] = call
        session.client_opened(CallLeg(self, call, key_budget(
            gateway.accountant, spent, "the call is hung up")))

    def hang_up(self, call: Call) -> None:
        def failed(failure: Any) -> None:
            log.failure("hanging up call {call_id} failed", failure, call_id=call.id)

        Deferred.fromCoroutine(post(self._gateway, call.provider, f"/{call.id}/hangup", b"",
                                    b"application/json")).addErrback(failed)

    def ended(self, call: Call) -> None:
        self._calls.pop(call.id, None)


@implementer(ILeg, IPushProducer)
class CallLeg:
    """
    The caller's leg of a call's sideband: the gateway, which reads the events for the tally
    only.  Closing it hangs the call up, unless the provider has already ended it.
    """

    def __init__(self, book: CallBook, call: Call,
                 over_budget: Callable[[Session], str | None]) -> None:
        self._book = book
        self._call = call
        self._over_budget = over_budget
        self._seen: Any = None
        self._closed = False

    @property
    def producer(self) -> Any:
        return self

    def pauseProducing(self) -> None:
        """The gateway reads every event at once: nothing to pause."""

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass

    def pause_source(self, producer: Any) -> None:
        """Never paused: the events are read as they come."""

    def relay_frames(self, *callbacks: Any) -> None:
        """The relay at the frame level (branch realtime-frames): the gateway sends nothing."""

    def write_frames(self, data: bytes, mid_message: bool) -> None:
        """The sideband's frames as bytes, once the tally has seen them."""
        self.send(data, False)

    def send(self, payload: bytes, is_binary: bool) -> None:
        """An event of the call, already tallied: only the key's budget is checked."""
        session = self._call.session
        usage = session.tally.usage
        if usage is self._seen or self._closed:
            return
        self._seen = usage
        reason = self._over_budget(session)
        if reason is not None:
            session.end("key_budget_exceeded", reason)

    def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        session = self._call.session
        if session.upstream_close is None:
            self._book.hang_up(self._call)
        self._book.ended(self._call)
        # Told after this close returns, as a socket's close would be.
        self._book.clock.callLater(0, session.client_closed, True, code, reason)

    def drop(self) -> None:
        self.close(1001, "the gateway dropped the call")


def offer_form(sdp: bytes, session: Mapping[str, Any], boundary: str) -> bytes:
    """The ``multipart/form-data`` body of a call's offer: its SDP and session config."""
    dash = b"--" + boundary.encode()
    return b"".join((
        dash, b'\r\nContent-Disposition: form-data; name="sdp"\r\n'
        b"Content-Type: application/sdp\r\n\r\n", sdp, b"\r\n",
        dash, b'\r\nContent-Disposition: form-data; name="session"\r\n'
        b"Content-Type: application/json\r\n\r\n", orjson.dumps(dict(session)), b"\r\n",
        dash, b"--\r\n"))
