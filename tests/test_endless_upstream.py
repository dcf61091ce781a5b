"""
An upstream whose body never ends (issue 19, item 4): every endpoint answers at once with a
clear error and closes the upstream connection, non-stream bodies past ``max_response_bytes``
(or announced past it) with a 502, streams at an event past the per-event limit with an error
event; the gateway stays responsive meanwhile.
"""

from __future__ import annotations

from typing import Any

import orjson
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from tests.gateway_harness import CONFIG, GatewayTestCase
from txgateway.streams import MAX_EVENT_BYTES

LIMIT = 1024 * 1024
PIECE = 64 * 1024

ENDLESS_CONFIG = (
    CONFIG.replace("  idle_timeout: 0.5\n", f"  idle_timeout: 5\n  max_response_bytes: {LIMIT}\n")
    .replace("providers:\n", "providers:\n"
             "  endless:\n    plugin: openai\n"
             "    base_url: http://127.0.0.1:{endless_port}/v1\n"
             "  announced:\n    plugin: openai\n"
             "    base_url: http://127.0.0.1:{endless_port}/announced/v1\n"
             "  endless-claude:\n    plugin: anthropic\n"
             "    base_url: http://127.0.0.1:{endless_port}\n    api_key: sk-ant\n")
    .replace("models:\n", "models:\n"
             "  - name: endless\n    provider: endless\n"
             "  - name: announced\n    provider: announced\n"
             "  - name: endless-claude\n    provider: endless-claude\n")
)


class EndlessAnswer(Protocol):
    """Answers the request's head (after its body) with a body that never ends: JSON, or
    for a streamed call one SSE event that never ends; ``/announced/`` paths announce a
    Content-Length far past any limit."""

    def connectionMade(self) -> None:
        self.data = b""
        self.sent = 0
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        end = self.data.find(b"\r\n\r\n")
        if end < 0 or self.sent:
            return
        head = self.data[:end].lower()
        length = int(head.split(b"content-length:")[1].split(b"\r\n")[0])
        body = self.data[end + 4:]
        if len(body) < length:
            return
        stream = b'"stream":true' in body.replace(b" ", b"")
        framing = (b"Content-Length: 99999999999\r\n" if b" /announced/" in head
                   else b"Transfer-Encoding: chunked\r\n")
        content_type = b"text/event-stream" if stream else b"application/json"
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: " + content_type + b"\r\n"
                             + framing + b"\r\n")
        start = b'data: {"type":"x","text":"' if stream else b'{"id":"x","text":"'
        self.sent = len(start)
        self.chunked = b"chunked" in framing
        self._write(start)
        self.transport.registerProducer(_Pump(self), False)

    def _write(self, data: bytes) -> None:
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)

    def pump(self) -> None:
        self.sent += PIECE
        self._write(b"x" * PIECE)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


@implementer(IPullProducer)
class _Pump:
    def __init__(self, answer: EndlessAnswer) -> None:
        self._answer = answer

    def resumeProducing(self) -> None:
        self._answer.pump()

    def stopProducing(self) -> None:
        pass


class EndlessUpstream(Factory):
    protocol = EndlessAnswer
    noisy = False

    def __init__(self) -> None:
        self.connections: list[EndlessAnswer] = []


class EndlessBodyTests(GatewayTestCase):
    config = ENDLESS_CONFIG

    async def _start(self) -> None:
        self.endless = EndlessUpstream()
        self.endless_port = reactor.listenTCP(0, self.endless, interface="127.0.0.1")
        self.addCleanup(self.endless_port.stopListening)
        self.config = ENDLESS_CONFIG.replace(
            "{endless_port}", str(self.endless_port.getHost().port))
        await super()._start()

    async def call(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        response = await treq.post(self.base_url + path, orjson.dumps(body), pool=self.pool,
                                   headers={b"content-type": [b"application/json"],
                                            b"anthropic-version": [b"2023-06-01"]},
                                   timeout=20)
        return response.code, await response.content()

    async def test_every_endpoint_answers_at_once(self) -> None:
        messages = [{"role": "user", "content": "hi"}]
        calls = [
            ("/v1/chat/completions", {"model": "endless", "messages": messages}),
            ("/v1/chat/completions", {"model": "announced", "messages": messages}),
            ("/v1/embeddings", {"model": "endless", "input": "hi"}),
            ("/v1/responses", {"model": "endless", "input": "hi"}),
            ("/v1/messages", {"model": "endless-claude", "max_tokens": 5,
                              "messages": messages}),
            ("/v1/messages", {"model": "endless", "max_tokens": 5, "messages": messages}),
        ]
        streams = [
            ("/v1/chat/completions", {"model": "endless", "messages": messages,
                                      "stream": True}),
            ("/v1/responses", {"model": "endless", "input": "hi", "stream": True}),
            ("/v1/messages", {"model": "endless-claude", "max_tokens": 5,
                              "messages": messages, "stream": True}),
            # Translated: the OpenAI stream's endless event, for a Messages caller.
            ("/v1/messages", {"model": "endless", "max_tokens": 5, "messages": messages,
                              "stream": True}),
        ]
        started = reactor.seconds()
        answers = gatherResults([Deferred.fromCoroutine(self.call(path, body))
                                 for path, body in calls + streams])
        health = await treq.get(self.base_url + "/health", pool=self.pool, timeout=5)
        self.assertEqual(health.code, 200)
        results = await answers
        self.assertLess(reactor.seconds() - started, 15)
        for (path, body), (status, answer) in zip(calls, results[:len(calls)], strict=True):
            self.assertEqual(status, 502, (path, body["model"], answer[:300]))
            self.assertIn(b"exceeds the limit of %d bytes" % LIMIT, answer, path)
        for (path, _), (status, answer) in zip(streams, results[len(calls):], strict=True):
            self.assertEqual(status, 200, path)
            self.assertIn(b"event exceeds %d bytes" % MAX_EVENT_BYTES, answer, path)
            self.assertLess(len(answer), 10_000, path)  # the endless event is not relayed
        for connection in self.endless.connections:
            await connection.lost  # every upstream connection closed
        announced = [c for c in self.endless.connections if b" /announced/" in c.data]
        self.assertEqual(len(announced), 1)
        self.assertLess(announced[0].sent, 4 * PIECE)  # refused by its length, not read
        for connection in self.endless.connections:
            limit = MAX_EVENT_BYTES if b'"stream":true' in connection.data else LIMIT
            self.assertLess(connection.sent, limit + 64 * PIECE)
        records = self.access_records()
        self.assertEqual([record["status"] for record in records], [502] * len(results))
