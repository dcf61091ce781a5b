"""A body over ``max_body_bytes``: refused by the site before routing, yet counted."""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet.defer import succeed
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from tests.gateway_harness import GatewayTestCase

#: The harness's ``max_body_bytes`` is 65536.
OVER = b"x" * 70000


@implementer(IBodyProducer)
class ChunkedBody:
    """A body producer of unknown length: sent chunked, the site sees its size as it comes."""

    length = UNKNOWN_LENGTH

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    def startProducing(self, consumer: Any) -> Any:
        for chunk in self._chunks:
            consumer.write(chunk)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class OversizedTests(GatewayTestCase):
    async def refuse(self, path: str, body: Any) -> None:
        response = await treq.post(self.base_url + path, body, pool=self.pool,
                                   headers={b"content-type": [b"application/json"]})
        self.assertEqual(response.code, 413)
        error = await response.json()
        if "/messages" in path:  # in the caller's dialect (found by the wire fuzz)
            self.assertEqual((error["type"], error["error"]["type"]),
                             ("error", "request_too_large"))
        else:
            self.assertEqual(error["error"]["code"], "request_too_large")

    async def test_counted_by_route(self) -> None:
        """By Content-Length or as a chunked body grows, in metrics and the access log."""
        await self.refuse("/v1/chat/completions", OVER)
        await self.refuse("/v1/chat/completions?api-version=1", OVER)
        await self.refuse("/p/fake/anything/at/all", ChunkedBody([OVER[:40000]] * 2))
        await self.refuse("/v1/messages/count_tokens", OVER)
        await self.refuse("/v1/no/such/endpoint", OVER)
        await self.refuse("/anthropic/v1/messages", OVER)
        samples = await self.metrics()

        def requests(route: str) -> float:
            labels = (("model", ""), ("provider", ""), ("route", route), ("status", "413"))
            return samples.get(("txgateway_requests_total", labels), 0)

        self.assertEqual([requests(route) for route in (
            "chat", "passthrough", "count_tokens", "unknown", "messages")], [2, 1, 1, 1, 1])
        records = self.access_records()
        self.assertEqual([(record["route"], record["status"]) for record in records],
                         [("chat", 413), ("chat", 413), ("passthrough", 413),
                          ("count_tokens", 413), ("unknown", 413), ("messages", 413)])
        self.assertEqual(records[0]["error"],
                         "the request body exceeds the limit of 65536 bytes")
        self.assertEqual((self.fake.requests, self.fake.echoes, self.claude.requests),
                         ([], [], []))
