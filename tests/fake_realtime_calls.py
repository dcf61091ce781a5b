"""
A fake OpenAI realtime server that also takes WebRTC calls, on one loopback port:
``POST /v1/realtime/calls`` answers an offer (201, ``application/sdp``, ``Location:
/v1/realtime/calls/rtc_...``), ``.../{call_id}/{accept,reject,refer,hangup}`` answer 200 (a
hangup closes the call's sideband with 1000), and ``/v1/realtime?call_id=`` opens a call's
sideband (404 ``call_id_not_found`` for an unknown call).  A call's peer-to-peer turns are
played on its sideband by the test, with `FakeRealtimeProtocol.respond`.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.fake_realtime import FakeRealtime, FakeRealtimeProtocol

ANSWER = b"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


@attrs.define
class FakeCalls(FakeRealtime):
    #: Each request to the calls endpoints: (path, headers, body).
    posts: list[tuple[str, dict[str, str], bytes]] = attrs.field(factory=list)
    #: Calls made, hung up ones included.
    calls: list[str] = attrs.field(factory=list)
    #: The status the next offer is answered with, when not 201.
    refuse_offer: int | None = None

    def sideband(self, call_id: str) -> Any:
        return next(c for c in self.connections if c.call_id == call_id)


class SidebandProtocol(FakeRealtimeProtocol):
    fake: FakeCalls
    call_id: str | None = None

    def onConnect(self, request: Any) -> None:
        call_id = (request.params.get("call_id") or [None])[0]
        if call_id is not None and call_id not in self.fake.calls:
            raise ConnectionDeny(404, "call_id_not_found")
        self.call_id = call_id
        super().onConnect(request)


class Calls(Resource):
    def __init__(self, fake: FakeCalls) -> None:
        super().__init__()
        self._fake = fake

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self

    def render_POST(self, request: Any) -> bytes:
        fake = self._fake
        headers = {k.decode().lower(): v[0].decode()
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        fake.posts.append((request.path.decode(), headers, request.content.read()))
        segments = request.path.decode().split("/")[4:]
        if not segments or segments == [""]:
            if fake.refuse_offer is not None:
                request.setResponseCode(fake.refuse_offer)
                request.setHeader(b"content-type", b"application/json")
                return orjson.dumps({"error": {"message": "bad offer", "type":
                                               "invalid_request_error", "code": "bad_sdp",
                                               "param": None}})
            call_id = f"rtc_fake{len(fake.calls)}"
            fake.calls.append(call_id)
            request.setResponseCode(201)
            request.setHeader(b"content-type", b"application/sdp")
            request.setHeader(b"location", f"/v1/realtime/calls/{call_id}".encode())
            return ANSWER
        call_id, action = segments[0], segments[1]
        if action == "hangup":
            for connection in fake.connections:
                if connection.call_id == call_id:
                    connection.sendClose(1000, "call ended")
        request.setHeader(b"content-type", b"application/json")
        return b"{}"


class Realtime(Resource):
    """The sideband WebSocket at ``/v1/realtime``, the calls below it."""

    def __init__(self, fake: FakeCalls) -> None:
        super().__init__()
        factory = WebSocketServerFactory()
        factory.protocol = type("Sideband", (SidebandProtocol,), {"fake": fake})
        self._socket = WebSocketResource(factory)
        self.putChild(b"calls", Calls(fake))

    def render(self, request: Any) -> Any:
        return self._socket.render(request)


def start_fake_calls() -> tuple[FakeCalls, Any]:
    fake = FakeCalls()
    root, v1 = Resource(), Resource()
    root.putChild(b"v1", v1)
    v1.putChild(b"realtime", Realtime(fake))
    return fake, reactor.listenTCP(0, Site(root), interface="127.0.0.1")
