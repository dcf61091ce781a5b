"""
Overload (issue 16, item 6): past ``max_in_flight`` calls under way, a new call is refused at
once with 503 and Retry-After instead of queueing; the gateway stays observable and recovers.
"""

from __future__ import annotations

import orjson
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from tests.gateway_harness import CONFIG, GatewayTestCase

LIMIT = 4


class OverloadTests(GatewayTestCase):
    #: The held calls wait 5 s for their upstream's headers.
    config = (CONFIG.replace("max_body_bytes:", f"max_in_flight: {LIMIT}\nmax_body_bytes:")
              .replace("first_byte_timeout: 1", "first_byte_timeout: 5"))

    async def chat(self, model: str) -> tuple[int, bytes, bytes | None, float]:
        started = reactor.seconds()
        response = await self.post("/v1/chat/completions", orjson.dumps(
            {"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        body = await response.content()
        return (response.code, body, response.headers.getRawHeaders(b"retry-after", [None])[0],
                reactor.seconds() - started)

    async def test_burst_is_refused_at_once(self) -> None:
        """A 10x burst over the limit: 503 + Retry-After in well under the calls' own time."""
        accountant = self.service.gateway.accountant
        held = [Deferred.fromCoroutine(self.chat("slow-headers")) for _ in range(LIMIT)]
        for _ in range(100):
            if accountant.in_flight == LIMIT:
                break
            await deferLater(reactor, 0.01)
        self.assertEqual(accountant.in_flight, LIMIT)
        burst = await gatherResults([Deferred.fromCoroutine(self.chat("demo"))
                                     for _ in range(10 * LIMIT)])
        self.assertLessEqual(accountant.in_flight, LIMIT)
        self.assertEqual([call.called for call in held], [False] * LIMIT)
        for status, body, retry_after, took in burst:
            self.assertEqual((status, retry_after), (503, b"1"))
            self.assertEqual(orjson.loads(body)["error"]["code"], "overloaded")
            self.assertLess(took, 2.5)  # not queued behind the held calls' 5 s
        # In the caller's dialect.
        response = await self.post("/v1/messages", orjson.dumps(
            {"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
        refusal = orjson.loads(await response.content())
        self.assertEqual((response.code, refusal["type"], refusal["error"]["type"]),
                         (503, "error", "api_error"))
        health = await treq.get(self.base_url + "/health", pool=self.pool)
        self.assertEqual(health.code, 200)
        await health.content()
        for status, *_ in await gatherResults(held):
            self.assertEqual(status, 504)
        status, body, retry_after, _ = await self.chat("demo")
        self.assertEqual((status, retry_after), (200, None))
        refused = [record for record in self.access_records() if record["status"] == 503]
        self.assertEqual(len(refused), 10 * LIMIT + 1)
        self.assertEqual({record["route"] for record in refused}, {"chat", "messages"})
