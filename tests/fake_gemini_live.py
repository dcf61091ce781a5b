"""
A fake Gemini Live server (``BidiGenerateContent``) on loopback, in Gemini's wire format: JSON
messages in binary frames, ``setup`` first and answered ``setupComplete``.

Script: each ``realtimeInput.audio`` is heard (an ``inputTranscription``); a second of it
(16 kHz pcm16) makes a spoken turn.  ``clientContent`` completing a turn is answered by its
text: "weather" asks for the ``get_weather`` tool, "interrupt" starts a spoken turn then is
interrupted, anything else gets a spoken turn.  A ``toolResponse`` gets a text turn.  Each turn
ends with ``usageMetadata`` (`AUDIO_TURN_USAGE` or `TEXT_TURN_USAGE`) after ``turnComplete``.
"""

from __future__ import annotations

import base64
from typing import Any

import attrs
import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor

PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
#: 100 ms of Gemini's 24 kHz pcm16 answer: a ramp, so resampling would show.
ANSWER_AUDIO = bytes(range(256)) * 18 + bytes(192)
AUDIO_TURN_USAGE = {
    "promptTokenCount": 120, "responseTokenCount": 80, "totalTokenCount": 200,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 90},
                            {"modality": "AUDIO", "tokenCount": 30}],
    "responseTokensDetails": [{"modality": "AUDIO", "tokenCount": 80}]}
TEXT_TURN_USAGE = {
    "promptTokenCount": 40, "responseTokenCount": 10, "totalTokenCount": 50,
    "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 40}],
    "responseTokensDetails": [{"modality": "TEXT", "tokenCount": 10}]}
SECOND_AT_16K = 32000


@attrs.define
class FakeGeminiLive:
    paths: list[str] = attrs.field(factory=list)
    headers: list[dict[str, str]] = attrs.field(factory=list)
    received: list[dict[str, Any]] = attrs.field(factory=list)
    connections: list[Any] = attrs.field(factory=list)
    closes: list[tuple[bool, int | None, str | None]] = attrs.field(factory=list)
    #: Bytes of 16 kHz audio received, over all sessions.
    audio_bytes: int = 0


class FakeGeminiLiveProtocol(WebSocketServerProtocol):
    fake: FakeGeminiLive

    def onConnect(self, request: Any) -> None:
        self.fake.paths.append(request.path)
        self.fake.headers.append(dict(request.headers))
        self._heard = 0

    def onOpen(self) -> None:
        self.fake.connections.append(self)

    def emit(self, message: dict[str, Any]) -> None:
        self.sendMessage(orjson.dumps(message), True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = orjson.loads(payload)
        self.fake.received.append(message)
        if "setup" in message:
            self.emit({"setupComplete": {}})
        elif "realtimeInput" in message:
            audio = base64.b64decode(message["realtimeInput"]["audio"]["data"])
            self.fake.audio_bytes += len(audio)
            self._heard += len(audio)
            self.emit({"serverContent": {"inputTranscription": {"text": "hello "}}})
            if self._heard >= SECOND_AT_16K:
                self._heard = 0
                self.spoken_turn()
        elif "clientContent" in message:
            text = " ".join(part.get("text", "") for turn in message["clientContent"]["turns"]
                            for part in turn["parts"])
            if "weather" in text:
                self.emit({"toolCall": {"functionCalls": [
                    {"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}}]}})
            elif "interrupt" in text:
                self.emit({"serverContent": {"modelTurn": {"parts": [self.audio_part()]}}})
                self.emit({"serverContent": {"interrupted": True}})
                self.emit({"usageMetadata": AUDIO_TURN_USAGE})
            else:
                self.spoken_turn()
        elif "toolResponse" in message:
            self.emit({"serverContent": {"modelTurn": {"parts": [{"text": "It is sunny."}]}}})
            self.emit({"serverContent": {"turnComplete": True}})
            self.emit({"usageMetadata": TEXT_TURN_USAGE})

    @staticmethod
    def audio_part() -> dict[str, Any]:
        return {"inlineData": {"mimeType": "audio/pcm;rate=24000",
                               "data": base64.b64encode(ANSWER_AUDIO).decode()}}

    def spoken_turn(self) -> None:
        for word in ("Hi ", "there."):
            self.emit({"serverContent": {"modelTurn": {"parts": [self.audio_part()]},
                                         "outputTranscription": {"text": word}}})
        self.emit({"serverContent": {"generationComplete": True}})
        self.emit({"serverContent": {"turnComplete": True}})
        self.emit({"usageMetadata": AUDIO_TURN_USAGE})

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self in self.fake.connections:
            self.fake.closes.append((wasClean, code, reason))


def start_fake_gemini_live() -> tuple[FakeGeminiLive, Any]:
    """The fake's state and its listening port (on an ephemeral loopback port)."""
    fake = FakeGeminiLive()
    factory = WebSocketServerFactory()
    factory.protocol = type("FakeLive", (FakeGeminiLiveProtocol,), {"fake": fake})
    return fake, reactor.listenTCP(0, factory, interface="127.0.0.1")
