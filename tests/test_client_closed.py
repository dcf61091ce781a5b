"""
A caller who leaves mid-stream (issue 18, item 7) is a client-closed call, 499, in the access
log and the metrics, on every streaming family and provider kind; never an upstream error.
"""

from __future__ import annotations

from typing import Any

import orjson
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from tests.gateway_harness import CONFIG, GatewayTestCase

SLOW_CONFIG = (CONFIG.replace("providers:\n", "providers:\n"
                              "  slow-demo:\n    plugin: demo\n    chunk_delay: 0.05\n")
               .replace("models:\n", "models:\n  - name: slow-demo\n    provider: slow-demo\n"))

MESSAGES = [{"role": "user", "content": "Tell me a long story"}]


class _FirstBytesThenLeave(Protocol):
    def __init__(self) -> None:
        self.first: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.first.called:
            self.first.callback(data)
            self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if not self.first.called:
            self.first.errback(reason)


class ClientClosedTests(GatewayTestCase):
    config = SLOW_CONFIG

    async def leave(self, path: str, body: dict[str, Any]) -> None:
        response = await treq.post(
            self.base_url + path, orjson.dumps({**body, "stream": True}), unbuffered=True,
            pool=self.pool, headers={b"content-type": [b"application/json"],
                                     b"anthropic-version": [b"2023-06-01"]})
        self.assertEqual(response.code, 200)
        reader = _FirstBytesThenLeave()
        response.deliverBody(reader)
        await reader.first

    async def test_leaving_mid_stream_is_499_everywhere(self) -> None:
        calls = [
            ("/v1/chat/completions", {"model": "slow-demo", "messages": MESSAGES}),
            ("/v1/chat/completions", {"model": "slow-stream", "messages": MESSAGES}),
            ("/v1/messages", {"model": "slow-demo", "max_tokens": 50, "messages": MESSAGES}),
            ("/v1/messages", {"model": "slow-stream", "max_tokens": 50, "messages": MESSAGES}),
            ("/v1/responses", {"model": "slow-demo", "input": "Tell me a long story"}),
        ]
        for path, body in calls:
            await self.leave(path, body)
        for _ in range(60):
            records = self.access_records()
            if len(records) == len(calls):
                break
            await deferLater(reactor, 0.05)
        cases = [(path, body["model"]) for path, body in calls]
        self.assertEqual([(record["status"], record["error"]) for record in records],
                         [(499, "the client disconnected")] * len(calls),
                         list(zip(cases, records, strict=True)))
        metrics = await self.metrics()
        statuses = {labels for (name, labels), value in metrics.items()
                    if name == "txgateway_requests_total" and value}
        self.assertEqual({dict(labels)["status"] for labels in statuses}, {"499"})


class _UntilLastThenLeave(Protocol):
    """Reads a stream up to its last event (``last``), then leaves, as the SDKs do."""

    def __init__(self, last: bytes) -> None:
        self.last = last
        self.seen = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.seen += data
        if self.last in self.seen and not self.done.called:
            self.transport.loseConnection()
            self.done.callback(self.seen)

    def connectionLost(self, reason: Any = None) -> None:
        if not self.done.called:
            self.done.errback(reason)


class LeftWhenDoneTests(GatewayTestCase):
    """The demo ends its body a chunk delay after its last event: the caller is gone by then."""

    config = SLOW_CONFIG

    async def leave_after_the_last_event(self, path: str, body: dict[str, Any],
                                         last: bytes) -> tuple[bytes, dict[str, Any]]:
        response = await treq.post(
            self.base_url + path, orjson.dumps({**body, "stream": True}), unbuffered=True,
            pool=self.pool, headers={b"content-type": [b"application/json"],
                                     b"anthropic-version": [b"2023-06-01"]})
        reader = _UntilLastThenLeave(last)
        response.deliverBody(reader)
        seen = await reader.done
        for _ in range(60):
            records = self.access_records()
            if records:
                break
            await deferLater(reactor, 0.05)
        [record] = records
        self.assertEqual((record["status"], record["error"]), (200, None), path)
        self.assertFalse(record["usage_estimated"], path)
        return seen, record

    async def test_chat(self) -> None:
        seen, record = await self.leave_after_the_last_event(
            "/v1/chat/completions", {"model": "slow-demo", "messages": MESSAGES,
                                     "stream_options": {"include_usage": True}},
            b"data: [DONE]")
        [usage] = [orjson.loads(line[6:])["usage"] for line in seen.split(b"\n\n")
                   if line.startswith(b"data: {") and b'"usage":{' in line]
        self.assertEqual((record["input_tokens"], record["output_tokens"]),
                         (usage["prompt_tokens"], usage["completion_tokens"]))

    async def test_messages(self) -> None:
        await self.leave_after_the_last_event(
            "/v1/messages", {"model": "slow-demo", "max_tokens": 50, "messages": MESSAGES},
            b"event: message_stop")

    async def test_responses(self) -> None:
        await self.leave_after_the_last_event(
            "/v1/responses", {"model": "slow-demo", "input": "Tell me a long story"},
            b"event: response.completed")
