"""
An in-process ``IAgent``, for providers that answer without a network (the demo).

Its responses go through exactly the code paths an HTTP upstream's do, streamed bodies,
backpressure and aborts included, because they are real ``IResponse`` objects whose bodies
are delivered chunk by chunk on the reactor's clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IResponse
from zope.interface import implementer

from txgateway.upstream import UpstreamBroken


@attrs.frozen
class LocalAnswer:
    """What a local handler answers: status, content type, and the body in chunks."""

    status: int
    content_type: bytes
    chunks: Sequence[bytes]
    #: Seconds between two chunks.
    delay: float = 0.0


LocalHandler = Callable[[bytes, bytes, bytes], LocalAnswer]
"""Called with (method, url, body)."""


@implementer(IAgent)
class LocalAgent:
    def __init__(self, reactor: Any, handler: LocalHandler) -> None:
        self._reactor = reactor
        self._handler = handler

    def request(self, method: bytes, uri: bytes, headers: Headers | None = None,
                bodyProducer: Any = None) -> Deferred[IResponse]:
        body = _Collector()
        if bodyProducer is not None:
            bodyProducer.startProducing(body)
        try:
            answer = self._handler(method, uri, b"".join(body.parts))
        except Exception:
            return fail()
        return succeed(LocalResponse(self._reactor, answer))


class _Collector:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


@implementer(IResponse)
class LocalResponse:
    version = (b"HTTP", 1, 1)
    previousResponse = None
    request = None

    def __init__(self, reactor: Any, answer: LocalAnswer) -> None:
        self._reactor = reactor
        self._answer = answer
        self.code = answer.status
        self.phrase = b"OK" if answer.status == 200 else b"Error"
        self.headers = Headers({b"content-type": [answer.content_type]})
        self.length = UNKNOWN_LENGTH

    def deliverBody(self, protocol: Any) -> None:
        _BodyPlayer(self._reactor, self._answer, protocol).start()

    def setPreviousResponse(self, response: IResponse) -> None:
        self.previousResponse = response


class _BodyPlayer:
    """Plays a body's chunks to a protocol; it is the protocol's transport (a push producer)."""

    def __init__(self, reactor: Any, answer: LocalAnswer, protocol: Any) -> None:
        self._reactor = reactor
        self._chunks = list(answer.chunks)
        self._delay = answer.delay
        self._protocol = protocol
        self._next = 0
        self._paused = False
        self._over = False
        self._timer: Any = None

    def start(self) -> None:
        self._protocol.makeConnection(self)
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        if not self._over and not self._paused and self._timer is None:
            self._timer = self._reactor.callLater(delay, self._play)

    def _play(self) -> None:
        self._timer = None
        if self._next < len(self._chunks):
            chunk = self._chunks[self._next]
            self._next += 1
            self._protocol.dataReceived(chunk)
            self._schedule(self._delay)
        else:
            self._end(Failure(ResponseDone()))

    def _end(self, reason: Failure) -> None:
        if not self._over:
            self._over = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._protocol.connectionLost(reason)

    def pauseProducing(self) -> None:
        self._paused = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule(self._delay)

    def stopProducing(self) -> None:
        self._end(Failure(UpstreamBroken("the local answer was stopped")))
