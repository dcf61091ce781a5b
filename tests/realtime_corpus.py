"""
A recorded corpus of realtime sessions (GA and beta) as WebSocket frames, and raw peers that
send and record frames as bytes, for the byte-identical relay test.

The frame codec here is written apart from `txgateway.realtime.frames`, so the test does not
check the relay with its own parser.  Each session is what a caller and an upstream sent:
events as OpenAI and the SDKs write them, audio appends and deltas, binary frames, fragmented
messages (a ping between fragments), and payloads of 0, 125, 126, 65535 and 65536 bytes.
"""

from __future__ import annotations

import base64
import os
import random
from typing import Any

import attrs
import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol

TEXT, BINARY, CONTINUATION, PING = 1, 2, 0, 9
#: 20 ms of pcm16 at 24 kHz, as base64.
AUDIO = base64.b64encode(bytes(range(256)) * 3 + bytes(192)).decode()
SIZES = (0, 125, 126, 65535, 65536)


@attrs.frozen
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True


def encode(frame: Frame, mask: bytes | None) -> bytes:
    """The frame on the wire; masked (as a client sends) when ``mask`` is given."""
    size = len(frame.payload)
    first = (0x80 if frame.fin else 0) | frame.opcode
    bit = 0x80 if mask is not None else 0
    if size < 126:
        head = bytes((first, bit | size))
    elif size < 65536:
        head = bytes((first, bit | 126)) + size.to_bytes(2, "big")
    else:
        head = bytes((first, bit | 127)) + size.to_bytes(8, "big")
    if mask is None:
        return head + frame.payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(frame.payload))


def decode(buffer: bytearray) -> list[tuple[Frame, bytes]]:
    """Whole frames taken off the front of ``buffer``: each decoded, with its raw bytes."""
    frames = []
    while len(buffer) >= 2:
        size = buffer[1] & 0x7F
        at = 2
        if size == 126:
            if len(buffer) < 4:
                break
            size, at = int.from_bytes(buffer[2:4], "big"), 4
        elif size == 127:
            if len(buffer) < 10:
                break
            size, at = int.from_bytes(buffer[2:10], "big"), 10
        mask = None
        if buffer[1] & 0x80:
            mask = bytes(buffer[at:at + 4])
            at += 4
        if len(buffer) < at + size:
            break
        payload = bytes(buffer[at:at + size])
        if mask is not None:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frames.append((Frame(buffer[0] & 0x0F, payload, bool(buffer[0] & 0x80)),
                       bytes(buffer[:at + size])))
        del buffer[:at + size]
    return frames


def event(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def padded(kind: str, size: int) -> bytes:
    """A text event of exactly ``size`` bytes (an empty payload for 0)."""
    if size == 0:
        return b""
    body = event(type=kind, delta="")
    return body[:-2] + b"x" * (size - len(body)) + body[-2:]


def fragments(opcode: int, payload: bytes, cuts: tuple[int, ...]) -> list[Frame]:
    """``payload`` as a fragmented message cut at ``cuts`` (a ping after the first)."""
    bounds = (0, *cuts, len(payload))
    parts = [payload[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    frames = [Frame(opcode if i == 0 else CONTINUATION, part, i == len(parts) - 1)
              for i, part in enumerate(parts)]
    return [frames[0], Frame(PING, b"are you there"), *frames[1:]]


USAGE = {"total_tokens": 253, "input_tokens": 132, "output_tokens": 121,
         "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "cached_tokens": 64},
         "output_token_details": {"text_tokens": 30, "audio_tokens": 91}}


def session(beta: bool) -> tuple[list[Frame], list[Frame]]:
    """What the caller and the upstream send in one session."""
    delta = "response.audio.delta" if beta else "response.output_audio.delta"
    if beta:
        created = event(type="session.created", event_id="e1", session={
            "id": "sess_beta", "model": "gpt-4o-realtime-preview",
            "input_audio_format": "pcm16", "output_audio_format": "g711_ulaw"})
    else:
        created = event(type="session.created", event_id="e1", session={
            "id": "sess_ga", "model": "gpt-realtime", "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24000},
                          "transcription": {"model": "gpt-4o-transcribe"}},
                "output": {"format": {"type": "audio/pcmu"}}}})
    append = event(type="input_audio_buffer.append", audio=AUDIO)
    client = [
        Frame(TEXT, event(type="session.update", session={"type": "realtime"})),
        *[Frame(TEXT, append) for _ in range(3)],
        Frame(TEXT, event(type="input_audio_buffer.append", audio=AUDIO, event_id="c1")),
        Frame(TEXT, b'{"type": "input_audio_buffer.append", "audio": "' + AUDIO[:400].encode()
              + b'"}'),
        *fragments(TEXT, append, (7, 300)),
        *fragments(BINARY, os.urandom(3000), (1000, 1000)),
        *[Frame(BINARY, os.urandom(size)) for size in SIZES],
        *[Frame(TEXT, padded("conversation.item.create", size)) for size in SIZES if size],
        Frame(TEXT, event(type="response.create")),
    ]
    done = event(type="response.done", event_id="e9",
                 response={"id": "resp_1", "status": "completed", "usage": USAGE})
    server = [
        Frame(TEXT, created),
        *[Frame(TEXT, event(type=delta, delta=AUDIO, item_id=f"i{n}")) for n in range(3)],
        Frame(TEXT, event(type="response.created", response={"id": "resp_1"})),
        *fragments(TEXT, done, (20, 21)),
        Frame(TEXT, event(type="response.created", response={"id": "resp_2"})),
        Frame(TEXT, event(type="response.done",
                          response={"id": "resp_2", "status": "cancelled", "usage": USAGE})),
        Frame(TEXT, event(type="conversation.item.input_audio_transcription.completed",
                          item_id="i1", content_index=0, transcript="hi", usage={
                              "type": "tokens", "input_tokens": 13, "output_tokens": 9})),
        Frame(TEXT, event(type="error", error={"type": "invalid_request_error"})),
        *[Frame(BINARY, os.urandom(size)) for size in SIZES],
        *[Frame(TEXT, padded(delta if size > 200 else "response.output_text.delta", size))
          for size in SIZES if size],
        *fragments(BINARY, os.urandom(70000), (65536,)),
    ]
    return client, server


def data_frames(frames: list[Frame]) -> list[Frame]:
    return [frame for frame in frames if frame.opcode < 8]


def pieces(data: bytes, seed: int) -> list[bytes]:
    """``data`` cut at random places, from 1 byte to a few thousand."""
    rng = random.Random(seed)
    cut, out = 0, []
    while cut < len(data):
        size = rng.choice((1, 2, 3, 7, 100, 1500, 9000))
        out.append(data[cut:cut + size])
        cut += size
    return out


# -------------------------------------------------------------------------- the raw peers


class RawUpstream(WebSocketServerProtocol):
    """An upstream that, once open, records every frame as bytes and writes its own raw."""

    def onOpen(self) -> None:
        self.buffer = bytearray()
        self.frames: list[tuple[Frame, bytes]] = []
        self.factory.connections.append(self)
        self.factory.opened.callback(self)

    def dataReceived(self, data: bytes) -> None:
        if self.state != self.STATE_OPEN:
            super().dataReceived(data)
            return
        self.buffer += data
        for frame, raw in decode(self.buffer):
            self.frames.append((frame, raw))
            if frame.opcode == 8:  # the closing handshake, answered raw too
                self.transport.write(encode(Frame(8, frame.payload[:2]), None))
                self.transport.loseConnection()


def start_raw_upstream() -> tuple[Any, Any]:
    factory = WebSocketServerFactory()
    factory.protocol = RawUpstream
    factory.connections = []
    factory.opened = Deferred()
    return factory, reactor.listenTCP(0, factory, interface="127.0.0.1")


class RawClient(Protocol):
    """A caller that upgrades by hand, then writes masked frames raw and records frames."""

    def connectionMade(self) -> None:
        self.buffer = bytearray()
        self.frames: list[tuple[Frame, bytes]] = []
        self.upgraded = False
        key = base64.b64encode(os.urandom(16)).decode()
        self.transport.write((
            f"GET /v1/realtime?model=voice HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: {self.factory.protocols}\r\n"
            "\r\n").encode())

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end == -1:
                return
            status = bytes(self.buffer[:end])
            del self.buffer[:end + 4]
            self.upgraded = True
            opened = self.factory.opened
            if b" 101 " in status.split(b"\r\n")[0]:
                opened.callback(self)
            else:
                opened.errback(ConnectionError(status.decode()))
        self.frames += decode(self.buffer)

    def connectionLost(self, reason: Any) -> None:
        self.factory.lost.callback(None)


def connect_raw(port: int, protocols: str) -> tuple[Deferred[RawClient], Any, ClientFactory]:
    factory = ClientFactory()
    factory.protocol = RawClient
    factory.protocols = protocols
    factory.opened = Deferred()
    factory.lost = Deferred()
    connector = reactor.connectTCP("127.0.0.1", port, factory)
    return factory.opened, connector, factory
