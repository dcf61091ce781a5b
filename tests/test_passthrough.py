"""End to end: ``/p/{provider}/...`` forwarded to a configured provider's own API."""

from __future__ import annotations

import hashlib
import os
from io import BytesIO
from typing import Any

import orjson
import treq
from twisted.internet import reactor
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers

from tests.gateway_harness import CONFIG, GatewayTestCase

LIMIT = 4 * 1024 * 1024


class PassthroughTests(GatewayTestCase):
    config = CONFIG.replace("max_body_bytes: 65536", f"max_body_bytes: {LIMIT}")

    async def request(self, method: bytes, path: bytes, body: bytes | None = None,
                      headers: dict[bytes, list[bytes]] | None = None) -> tuple[Any, bytes]:
        """A request whose path is sent exactly as written (no client-side normalising)."""
        agent = Agent(reactor, pool=self.pool)
        response = await agent.request(
            method, self.base_url.encode() + path, Headers(headers or {}),
            None if body is None else FileBodyProducer(BytesIO(body)))
        return response, await treq.content(response)

    async def test_get_with_query_and_credentials(self) -> None:
        """The query is kept, the caller's key replaced by the provider's, hops dropped."""
        response, body = await self.request(
            b"GET", b"/p/fake/echo/sub?x=1&y=two%20words",
            headers={b"authorization": [b"Bearer sk-caller"], b"x-api-key": [b"sk-caller"],
                     b"x-custom": [b"kept"], b"connection": [b"keep-alive, x-hop"],
                     b"x-hop": [b"dropped"]})
        self.assertEqual(response.code, 200)
        answer = orjson.loads(body)
        self.assertEqual((answer["method"], answer["uri"]),
                         ("GET", "/v1/echo/sub?x=1&y=two%20words"))
        method, uri, headers, sent = self.fake.echoes[0]
        self.assertEqual(headers[b"Authorization"], [b"Bearer sk-upstream-secret"])
        self.assertEqual(headers[b"X-Team"], [b"blue"])
        self.assertEqual(headers[b"X-Custom"], [b"kept"])
        self.assertNotIn(b"X-Api-Key", headers)
        self.assertNotIn(b"X-Hop", headers)
        self.assertEqual(response.headers.getRawHeaders(b"x-upstream"), [b"yes"])
        self.assertEqual(response.length, len(body))
        [record] = self.access_records()
        self.assertEqual((record["route"], record["provider"], record["input_tokens"],
                          record["output_tokens"]), ("passthrough", "fake", 3, 2))

    async def test_post_body_streamed_up(self) -> None:
        body = os.urandom(2 * 1024 * 1024)
        response = await treq.post(self.base_url + "/p/fake/echo", body, pool=self.pool,
                                   headers={b"content-type": [b"application/octet-stream"]})
        answer = await response.json()
        self.assertEqual((answer["method"], answer["body_size"]), ("POST", len(body)))
        self.assertEqual(answer["body_sha256"], hashlib.sha256(body).hexdigest())

    async def test_json_model_recorded(self) -> None:
        await self.request(b"PUT", b"/p/fake/echo", orjson.dumps({"model": "gpt-4o"}),
                           {b"content-type": [b"application/json"]})
        [record] = self.access_records()
        self.assertEqual((record["model"], self.fake.echoes[0][0]), ("gpt-4o", b"PUT"))

    async def test_answer_relayed_as_it_arrives(self) -> None:
        arrivals: list[tuple[float, bytes]] = []
        response = await treq.get(self.base_url + "/p/fake/echo-stream", pool=self.pool)
        await treq.collect(response, lambda data: arrivals.append((reactor.seconds(), data)))
        self.assertEqual(b"".join(data for _, data in arrivals), b"part0;part1;part2;part3;")
        self.assertGreater(len(arrivals), 1)
        self.assertGreater(arrivals[-1][0] - arrivals[0][0], 0.1)

    async def test_redirect_not_followed(self) -> None:
        response, _ = await self.request(b"GET", b"/p/fake/redirect")
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/v1/echo/redirected"])
        self.assertEqual(len(self.fake.echoes), 1)

    async def test_unknown_provider(self) -> None:
        for path in (b"/p/nobody/echo", b"/p/demo/echo", b"/p/", b"/p"):
            response, body = await self.request(b"GET", path)
            self.assertEqual(response.code, 404, path)
            self.assertIn("error", orjson.loads(body))
        self.assertEqual(self.fake.echoes, [])

    async def test_escaping_paths_refused(self) -> None:
        for path in (b"/p/fake/../secret", b"/p/fake/echo/%2e%2e/x", b"/p/fake/a%2Fb",
                     b"/p/fake/http://evil.example/x", b"/p/fake/echo//x"):
            response, body = await self.request(b"GET", path)
            self.assertEqual(response.code, 400, path)
            self.assertEqual(orjson.loads(body)["error"]["code"], "invalid_path")
        self.assertEqual(self.fake.echoes, [])

    async def test_unreachable_provider(self) -> None:
        response, body = await self.request(b"GET", b"/p/nowhere/models")
        self.assertEqual(response.code, 502)
        self.assertEqual(orjson.loads(body)["error"]["code"], "upstream_unreachable")
