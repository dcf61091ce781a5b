"""
A fake OpenAI realtime server on loopback (GA wire format), for tests through the gateway.

It records each handshake and every frame it receives, and answers from a script:
``response.create`` plays a response whose usage is `USAGE` (the GA spec's example), or, for an
out-of-band one, `OOB_USAGE`; ``response.cancel`` stops the one playing (the named one, else the
latest) with a ``cancelled`` ``response.done`` carrying `CANCELLED_USAGE`, or answers OpenAI's
``response_cancel_not_active`` error when none plays; a committed buffer gets a transcription
with `ASR_USAGE` (`DURATION_USAGE` once a ``session.update`` set a whisper transcription
model); a ``session.update`` is answered ``session.updated``.
Special models: ``refuse-429`` and ``refuse-401`` refuse the upgrade; a client event
``test.drop`` makes it drop the TCP connection mid-response, ``test.close`` close with 4321,
``test.flood`` write ``count`` audio deltas of ``size`` base64 characters at once (each with its
index as ``item_id``), then a ``test.flooded``.

At ``/v1/realtime/translations`` it speaks the translation protocol instead (`Translation`),
and at ``/v1/live/sessions`` the Live one (`Live`).
"""

from __future__ import annotations

import base64
from typing import Any

import attrs
import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet import reactor
from twisted.internet.defer import Deferred

USAGE = {"total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
         "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "image_tokens": 0,
                                 "cached_tokens": 64,
                                 "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0,
                                                           "image_tokens": 0}},
         "output_token_details": {"text_tokens": 30, "audio_tokens": 91}}
OOB_USAGE = {"total_tokens": 20, "input_tokens": 15, "output_tokens": 5,
             "input_token_details": {"text_tokens": 10, "audio_tokens": 0, "image_tokens": 5,
                                     "cached_tokens": 0},
             "output_token_details": {"text_tokens": 5, "audio_tokens": 0}}
#: What a response cancelled after its first deltas used: all its input, a little output.
CANCELLED_USAGE = {"total_tokens": 167, "input_tokens": 150, "output_tokens": 17,
                   "input_token_details": {"text_tokens": 125, "audio_tokens": 25,
                                           "image_tokens": 0, "cached_tokens": 100,
                                           "cached_tokens_details": {"text_tokens": 96,
                                                                     "audio_tokens": 4,
                                                                     "image_tokens": 0}},
                   "output_token_details": {"text_tokens": 5, "audio_tokens": 12}}
ASR_USAGE = {"type": "tokens", "input_tokens": 13, "output_tokens": 9, "total_tokens": 22,
             "input_token_details": {"text_tokens": 0, "audio_tokens": 13}}
#: What a duration-priced transcription model (whisper-1) reports instead.
DURATION_USAGE = {"type": "duration", "seconds": 2.5}
#: 20 ms of pcm16 at 24 kHz.
AUDIO_FRAME = bytes(960)


@attrs.define
class Handshake:
    path: str
    params: dict[str, list[str]]
    headers: dict[str, str]
    protocols: list[str]


@attrs.define
class FakeRealtime:
    handshakes: list[Handshake] = attrs.field(factory=list)
    received: list[Any] = attrs.field(factory=list)
    closes: list[tuple[bool, int | None, str | None]] = attrs.field(factory=list)
    connections: list[Any] = attrs.field(factory=list)
    #: Seconds between a response's deltas.
    delay: float = 0.0
    closed: Deferred[None] | None = None


class FakeRealtimeProtocol(WebSocketServerProtocol):
    fake: FakeRealtime

    def onConnect(self, request: Any) -> None:
        self.fake.handshakes.append(Handshake(request.path, request.params,
                                              dict(request.headers), request.protocols))
        model = (request.params.get("model") or [""])[0]
        if model.startswith("refuse-"):
            raise ConnectionDeny(int(model[7:]), "refused")
        self._serial = 0
        #: Responses being played: their id and the call that plays their next event.
        self._playing: dict[str, Any] = {}
        self._surface = SURFACES.get(request.path, None)
        self._model = model

    def onOpen(self) -> None:
        self.fake.connections.append(self)
        if self._surface is not None:
            self._surface.opened(self)
            return
        self.emit({"type": "session.created", "session": {
            "type": "realtime", "object": "realtime.session", "id": "sess_fake",
            "model": "gpt-realtime", "output_modalities": ["audio"],
            "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}},
                      "output": {"format": {"type": "audio/pcm", "rate": 24000}}}}})

    def emit(self, event: dict[str, Any]) -> None:
        self._serial += 1
        self.sendMessage(orjson.dumps({"type": event["type"],
                                       "event_id": f"event_{self._serial}", **event}))

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self.fake.received.append(payload)
            self.sendMessage(payload, True)
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.fake.received.append(payload)
            self.emit({"type": "error", "error": {"type": "invalid_request_error",
                                                  "code": "invalid_json", "message": "bad json",
                                                  "param": None, "event_id": None}})
            return
        self.fake.received.append(event)
        kind = event.get("type")
        if self._surface is not None:
            self._surface.event(self, kind, event)
        elif kind == "response.create":
            self.respond(event.get("response") or {})
        elif kind == "response.cancel":
            self.cancel(event.get("response_id") or next(reversed(self._playing), None))
        elif kind == "input_audio_buffer.commit":
            self.emit({"type": "input_audio_buffer.committed", "item_id": "item_in",
                       "previous_item_id": None})
            self.emit({"type": "conversation.item.input_audio_transcription.completed",
                       "item_id": "item_in", "content_index": 0, "transcript": "hello",
                       "usage": (DURATION_USAGE if getattr(self, "_transcriber", "")
                                 .startswith("whisper") else ASR_USAGE)})
        elif kind == "session.update":
            session = event.get("session") or {}
            self._transcriber = ((session.get("audio") or {}).get("input", {})
                                 .get("transcription", {}).get("model", ""))
            self.emit({"type": "session.updated", "session": {
                "object": "realtime.session", "id": "sess_fake", **session}})
        elif kind == "test.drop":
            self.transport.abortConnection()
        elif kind == "test.close":
            self.sendClose(4321, "fake says bye")
        elif kind == "test.flood":
            audio = b"A" * event["size"]
            for index in range(event["count"]):
                self.sendMessage(b'{"type":"response.output_audio.delta","item_id":"%d",'
                                 b'"delta":"%s"}' % (index, audio))
            self.emit({"type": "test.flooded"})
        elif kind == "test.unknown":
            self.emit({"type": "future.event", "payload": [1, 2, 3]})

    def respond(self, options: dict[str, Any]) -> None:
        out_of_band = options.get("conversation") == "none"
        rid = f"resp_{self._serial}"
        self.emit({"type": "response.created", "response": {"id": rid, "status": "in_progress"}})
        steps = []
        for index in range(3):
            steps.append({"type": "response.output_audio_transcript.delta", "response_id": rid,
                          "delta": f"word{index} "})
            steps.append({"type": "response.output_audio.delta", "response_id": rid,
                          "delta": base64.b64encode(AUDIO_FRAME * 10).decode()})
        steps.append({"type": "response.done", "response": {
            "id": rid, "status": "completed",
            "usage": OOB_USAGE if out_of_band else USAGE}})
        self.play(rid, steps)

    def play(self, rid: str, steps: list[dict[str, Any]]) -> None:
        self._playing.pop(rid, None)
        if steps and self.state == self.STATE_OPEN:
            self.emit(steps[0])
            if steps[1:]:
                self._playing[rid] = reactor.callLater(self.fake.delay, self.play, rid,
                                                       steps[1:])

    def cancel(self, rid: str | None) -> None:
        """Stop a playing response the way OpenAI does: a cancelled ``response.done``."""
        playing = self._playing.pop(rid, None) if rid is not None else None
        if playing is None:
            self.emit({"type": "error", "error": {
                "type": "invalid_request_error", "code": "response_cancel_not_active",
                "message": "Cancellation failed: no active response found",
                "param": None, "event_id": None}})
            return
        playing.cancel()
        self.emit({"type": "response.done", "response": {
            "id": rid, "status": "cancelled",
            "status_details": {"type": "cancelled", "reason": "client_cancelled"},
            "usage": CANCELLED_USAGE}})

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        for timer in getattr(self, "_playing", {}).values():
            if timer.active():
                timer.cancel()
        if self in self.fake.connections:
            self.fake.closes.append((wasClean, code, reason))
            if self.fake.closed is not None:
                closed, self.fake.closed = self.fake.closed, None
                closed.callback(None)


class Translation:
    """
    ``/v1/realtime/translations``: ``session.created`` (type ``translation``) at once; each
    ``session.input_audio_buffer.append`` answered with a source and a translated transcript
    delta and the audio back as ``session.output_audio.delta``; ``session.close`` with
    ``session.closed`` and a close.  The protocol reports no usage.
    """

    @staticmethod
    def opened(server: FakeRealtimeProtocol) -> None:
        server.emit({"type": "session.created", "session": {
            "id": "sess_translate", "type": "translation", "model": server._model,
            "expires_at": 0, "audio": {"output": {"language": "es"}}}})

    @staticmethod
    def event(server: FakeRealtimeProtocol, kind: Any, event: dict[str, Any]) -> None:
        if kind == "session.input_audio_buffer.append":
            server.emit({"type": "session.input_transcript.delta", "delta": "hello ",
                         "elapsed_ms": 200})
            server.emit({"type": "session.output_transcript.delta", "delta": "hola ",
                         "elapsed_ms": 200})
            server.emit({"type": "session.output_audio.delta", "delta": event["audio"]})
        elif kind == "session.close":
            server.emit({"type": "session.closed"})
            server.sendClose(1000)
        elif kind == "test.close":
            server.sendClose(4321, "fake says bye")


class Live:
    """
    ``/v1/live/sessions``: ``session.start`` answered ``session.started``; ``test.usage``
    reports the cumulative ``seconds`` (and ``paused_seconds``) it carries in
    ``session.usage.updated``;
    ``session.close`` ends with ``session.closed`` carrying the last total, then a close.
    """

    @staticmethod
    def opened(server: FakeRealtimeProtocol) -> None:
        server._usage = {"seconds": 0}

    @staticmethod
    def event(server: FakeRealtimeProtocol, kind: Any, event: dict[str, Any]) -> None:
        if kind == "session.start":
            server.emit({"type": "session.started", "session": {
                "id": "live_fake", "model": server._model, **(event.get("session") or {})}})
        elif kind == "test.usage":
            server._usage = {name: event[name] for name in ("seconds", "paused_seconds")
                             if name in event}
            server.emit({"type": "session.usage.updated", "usage": server._usage})
        elif kind == "session.close":
            server.emit({"type": "session.closed", "reason": "close_requested",
                         "session": {"id": "live_fake"}, "usage": server._usage})
            server.sendClose(1000)


SURFACES: dict[str, Any] = {"/v1/realtime/translations": Translation, "/v1/live/sessions": Live}


def start_fake_realtime() -> tuple[FakeRealtime, Any]:
    """The fake's state and its listening port (on an ephemeral loopback port)."""
    fake = FakeRealtime()
    factory = WebSocketServerFactory()
    factory.protocol = type("Fake", (FakeRealtimeProtocol,), {"fake": fake})
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    return fake, port
