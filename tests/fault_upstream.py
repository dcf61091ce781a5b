"""
An upstream that misbehaves on purpose: the first path segment names the fault
(``/reset/v1/chat/completions``), so one listening port serves every cell of the fault matrix.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import orjson
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

CHUNK = orjson.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1,
                      "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"},
                                                 "finish_reason": None}]})
COMPLETION = orjson.dumps({
    "id": "c", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "dripped"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}})
#: What a provider says when it refuses: its own error body, which the caller must see.
PROVIDER_ERROR = {"error": {"message": "provider says no", "type": "invalid_request_error",
                            "param": None, "code": "provider_code"}}
#: Pause between the pieces of a drip: well under the gateway's idle timeout.
DRIP_PAUSE = 0.15


class FaultyAnswer(Protocol):
    """Reads one request, then answers it with the fault its path names."""

    def connectionMade(self) -> None:
        self.data = b""
        self.answered = False
        self.factory.connections.append(self)
        self.factory.open += 1

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open -= 1

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        end = self.data.find(b"\r\n\r\n")
        if end < 0 or self.answered:
            return
        head = self.data[:end]
        lowered = head.lower()
        length = (int(lowered.split(b"content-length:")[1].split(b"\r\n")[0])
                  if b"content-length:" in lowered else 0)
        body = self.data[end + 4:]
        if len(body) < length:
            return
        self.answered = True
        fault = head.split(b" ", 2)[1].split(b"/")[1].decode()
        self.factory.requests.append(fault)
        stream = b'"stream":true' in body.replace(b" ", b"")
        getattr(self, "fault_" + fault.replace("-", "_"))(stream)

    def _head(self, status: bytes, content_type: bytes, framing: bytes) -> None:
        self.transport.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type
                             + b"\r\nConnection: close\r\n" + framing + b"\r\n")

    def _stream_head(self, stream: bool) -> None:
        kind = b"text/event-stream" if stream else b"application/json"
        self._head(b"200 OK", kind, b"Transfer-Encoding: chunked\r\n")

    def _chunk(self, data: bytes) -> None:
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def fault_reset(self, stream: bool) -> None:
        """Accepted and read, then reset (RST, not FIN)."""
        handle = self.transport.getHandle()
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abortConnection()

    def fault_silent(self, stream: bool) -> None:
        """Never a byte back."""

    def fault_stall(self, stream: bool) -> None:
        """The head, then nothing."""
        self._stream_head(stream)

    def fault_cut(self, stream: bool) -> None:
        """Part of the body (mid-JSON, or mid-SSE event after a whole one), then closed."""
        if stream:
            self._stream_head(True)
            self._chunk(b"data: " + CHUNK + b"\n\n")
            self._chunk(b"data: " + CHUNK[:20])
        else:
            self._head(b"200 OK", b"application/json", b"Content-Length: 1000\r\n")
            self.transport.write(COMPLETION[:40])
        self.transport.loseConnection()

    def fault_malformed(self, stream: bool) -> None:
        """A whole answer that does not parse."""
        data = b"data: {not json\n\ndata: [DONE]\n\n" if stream else b"{not json"
        kind = b"text/event-stream" if stream else b"application/json"
        self._head(b"200 OK", kind, b"Content-Length: %d\r\n" % len(data))
        self.transport.write(data)
        self.transport.loseConnection()

    def fault_status_400(self, stream: bool) -> None:
        self._error(b"400 Bad Request")

    def fault_status_503(self, stream: bool) -> None:
        self._error(b"503 Service Unavailable")

    def _error(self, status: bytes) -> None:
        data = orjson.dumps(PROVIDER_ERROR)
        self._head(status, b"application/json", b"Content-Length: %d\r\n" % len(data))
        self.transport.write(data)
        self.transport.loseConnection()

    def fault_drip(self, stream: bool) -> None:
        """A good answer a few bytes at a time, each pause under the idle timeout."""
        self._stream_head(stream)
        if stream:
            pieces = [b"data: " + CHUNK + b"\n\n"] * 4 + [b"data: [DONE]\n\n"]
        else:
            pieces = [COMPLETION[i:i + 40] for i in range(0, len(COMPLETION), 40)]
        self._drip(pieces)

    def _drip(self, pieces: list[bytes]) -> None:
        if not self.connected:
            return
        if not pieces:
            self.transport.write(b"0\r\n\r\n")
            self.transport.loseConnection()
            return
        self._chunk(pieces[0])
        reactor.callLater(DRIP_PAUSE, self._drip, pieces[1:])


class FaultyUpstream(Factory):
    protocol = FaultyAnswer
    noisy = False

    def __init__(self) -> None:
        self.connections: list[FaultyAnswer] = []
        #: The fault of each request received, in order.
        self.requests: list[str] = []
        #: Connections still open.
        self.open = 0
