"""
Access (issue 16, item 5): the admin API refuses every route without its token or with a
wrong one, compared in constant time; a key limited to some models reaches no other through
any endpoint; passthrough reaches only its provider's host.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.web.resource import Resource

from tests.gateway_harness import GatewayTestCase
from tests.raw_http import RawAnswer, send_raw
from tests.test_keys import ADMIN, DEMO_ONLY_KEY, KEYS_CONFIG
from tests.test_realtime import refused
from txgateway.web.admin import Admin

#: Items below the admin collections, for the routes that take one.
ITEMS = (b"/admin/keys/cfg_team", b"/admin/realtime/sessions/rts_x")
WRONG = (None, b"Bearer", b"Bearer ", b"Bearer wrong", b"Bearer " + ADMIN.encode() + b"x",
         b"Bearer " + ADMIN.encode()[:-1], ADMIN.encode(), b"Basic " + ADMIN.encode(),
         b"Bearer  " + ADMIN.encode(), b"bearer " + ADMIN.encode())


def admin_paths(resource: Resource, prefix: bytes = b"/admin") -> list[bytes]:
    """Every fixed path under the admin resource, found in the tree (a new route is in)."""
    found = []
    for name, child in resource.children.items():
        path = prefix + b"/" + name
        found.append(path)
        found.extend(admin_paths(child, path))
    return found


class Collector(Protocol):
    """Counts connections to a host the gateway must never reach."""

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.transport.loseConnection()


class AccessTests(GatewayTestCase):
    config = KEYS_CONFIG

    async def raw(self, request: bytes) -> RawAnswer:
        return await deferToThread(send_raw, int(self.base_url.rsplit(":", 1)[1]), request)

    async def call(self, method: bytes, path: bytes, body: bytes = b"",
                   headers: dict[bytes, bytes] | None = None) -> RawAnswer:
        head = b"".join(b"%s: %s\r\n" % item for item in (headers or {}).items())
        return await self.raw(b"%s %s HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n%s"
                              b"Connection: close\r\n\r\n%s" % (method, path, len(body), head,
                                                                body))

    async def test_every_admin_route_refuses_without_the_token(self) -> None:
        paths = [path for path in admin_paths(Admin(self.service.gateway))
                 if path != b"/admin/ui"]
        self.assertGreater(len(paths), 6)
        paths += [b"/admin/", *ITEMS, b"/admin/%6beys", b"/admin/keys/../usage"]
        compared: list[tuple[bytes, bytes]] = []
        compare = hmac.compare_digest

        def recorded(a: Any, b: Any) -> bool:
            compared.append((a, b))
            return compare(a, b)

        self.patch(hmac, "compare_digest", recorded)
        for path in paths:
            for method in (b"GET", b"POST", b"PATCH", b"DELETE"):
                for authorization in WRONG:
                    headers = {} if authorization is None else {b"authorization": authorization}
                    answer = await self.call(method, path, b"{}", headers)
                    cell = (method, path, authorization, answer.status, answer.body[:200])
                    self.assertEqual(answer.status, 401, cell)
                    self.assertEqual(orjson.loads(answer.body)["error"]["code"],
                                     "invalid_admin_token", cell)
                    self.assertEqual(answer.headers.get(b"www-authenticate"), b"Bearer", cell)
        # Every refusal went through the constant-time compare, against the whole token.
        self.assertEqual(len(compared), len(paths) * 4 * len(WRONG))
        self.assertEqual({expected for _, expected in compared}, {b"Bearer " + ADMIN.encode()})
        answer = await self.call(b"GET", b"/admin/keys",
                                 headers={b"authorization": b"Bearer " + ADMIN.encode()})
        self.assertEqual(answer.status, 200)
        self.assertEqual(self.fake.requests, [])

    async def test_a_limited_key_reaches_no_other_model(self) -> None:
        """A key for `demo` only asks for `gpt-ok` (routed to the fake) everywhere: 403."""
        bearer = {b"authorization": b"Bearer " + DEMO_ONLY_KEY.encode(),
                  b"content-type": b"application/json"}
        anthropic = {b"x-api-key": DEMO_ONLY_KEY.encode(), b"anthropic-version": b"2023-06-01",
                     b"content-type": b"application/json"}
        chat = {"model": "gpt-ok", "messages": [{"role": "user", "content": "hi"}]}
        messages = {**chat, "max_tokens": 5}
        form = (b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\ngpt-ok\r\n'
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                b"Content-Type: audio/wav\r\n\r\nRIFF....\r\n--b--\r\n")
        multipart = {**bearer, b"content-type": b"multipart/form-data; boundary=b"}
        batch = (b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                 b'--b\r\nContent-Disposition: form-data; name="file"; filename="b.jsonl"\r\n'
                 b"Content-Type: application/jsonl\r\n\r\n"
                 + orjson.dumps({"custom_id": "1", "method": "POST",
                                 "url": "/v1/chat/completions", "body": chat})
                 + b"\r\n--b--\r\n")
        cases: list[tuple[bytes, Any, dict[bytes, bytes]]] = [
            (b"/v1/chat/completions", chat, bearer),
            (b"/v1/chat/completions", {**chat, "stream": True}, bearer),
            (b"/v1/completions", {"model": "gpt-ok", "prompt": "hi"}, bearer),
            (b"/v1/embeddings", {"model": "gpt-ok", "input": "hi"}, bearer),
            (b"/v1/responses", {"model": "gpt-ok", "input": "hi"}, bearer),
            (b"/v1/responses", {"model": "gpt-ok", "input": "hi", "stream": True}, bearer),
            (b"/v1/messages", messages, anthropic),
            (b"/v1/messages", {**messages, "stream": True}, anthropic),
            (b"/anthropic/v1/messages", messages, anthropic),
            (b"/v1/messages/count_tokens", chat, anthropic),
            (b"/v1/images/generations", {"model": "gpt-ok", "prompt": "a cat"}, bearer),
            (b"/v1/audio/speech", {"model": "gpt-ok", "input": "hi", "voice": "alloy"}, bearer),
            (b"/v1/audio/transcriptions", form, multipart),
            (b"/v1/audio/translations", form, multipart),
            (b"/v1/rerank", {"model": "gpt-ok", "query": "q", "documents": ["d"]}, bearer),
            (b"/v1/realtime/client_secrets", {"session": {"type": "realtime",
                                                          "model": "gpt-ok"}}, bearer),
            (b"/v1/realtime/calls?model=gpt-ok", b"v=0\r\n",
             {**bearer, b"content-type": b"application/sdp"}),
            (b"/v1/files", batch, multipart),
            # Passthrough: the model in the body, none, or an allowed name sent elsewhere.
            (b"/p/fake/chat/completions", chat, bearer),
            (b"/p/fake/models", b"", bearer),
            (b"/p/fake/chat/completions", {**chat, "model": "demo"}, bearer),
            (b"/p/claude/v1/messages", {**messages, "model": "demo"}, bearer),
        ]
        for path, body, headers in cases:
            raw = body if isinstance(body, bytes) else orjson.dumps(body)
            answer = await self.call(b"POST" if raw else b"GET", path, raw, headers)
            cell = (path, raw[:80], answer.status, answer.body[:300])
            self.assertEqual(answer.status, 403, cell)
            self.assertIn(b"model", answer.body, cell)
        status, body = await deferToThread(
            refused, f"ws://127.0.0.1:{self.base_url.rsplit(':', 1)[1]}/v1/realtime"
                     "?model=gpt-ok", additional_headers={"Authorization": "Bearer "
                                                          + DEMO_ONLY_KEY})
        self.assertEqual((status, body["error"]["code"]), (403, "model_not_allowed"))
        self.assertEqual((self.fake.requests, self.claude.requests), ([], []))
        # The key's own model still answers, and passthrough to a model its routes send
        # there under that name is fine for an unlimited key.
        answer = await self.call(b"POST", b"/v1/chat/completions",
                                 orjson.dumps({**chat, "model": "demo"}), bearer)
        self.assertEqual(answer.status, 200)

    async def test_passthrough_reaches_only_its_provider(self) -> None:
        evil = Factory.forProtocol(Collector)
        evil.connections = 0
        listening = reactor.listenTCP(0, evil, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        there = b"127.0.0.1:%d" % listening.getHost().port
        attacks = [
            b"http://" + there + b"/v1/models",  # absolute-form request target
            b"/p/fake/http://" + there + b"/x",
            b"/p/fake/http:%2F%2F" + there + b"/x",
            b"/p/fake//" + there + b"/x",
            b"/p/fake/%2F%2F" + there + b"/x",
            b"/p/fake/..",
            b"/p/fake/../../x",
            b"/p/fake/echo/%2e%2e/%2e%2e/x",
            b"/p/fake/echo/%2E%2E%2Fx",
            b"/p/fake/..%5Cx",
            b"/p/fake/echo\\..\\x",
            b"/p/fake/%252e%252e/x",
            b"/p/fake/@" + there + b"/x",
            b"/p/fake/echo@" + there,
            b"/p/fake/echo?u=http://" + there,
            b"/p/fake/echo#@" + there,
            b"/p/fake:@" + there + b"/x",
            b"/p/" + there + b"/x",
            b"/p/%2F%2F" + there + b"/x",
            b"/p/fake/redirect",
        ]
        key = {b"authorization": b"Bearer sk-team-0123456789"}
        for target in attacks:
            for host in (b"gw", there):
                answer = await self.call(b"GET", target, b"", {**key, b"x-host": host}
                                         if host == b"gw" else key)
                cell = (target, answer.status, answer.body[:200])
                self.assertLess(answer.status, 500, cell)
                self.assertNotEqual(answer.status, 0, cell)
        self.assertEqual(evil.connections, 0)
        # What did reach the fake went to its own base URL's path, nowhere else.
        for _, uri, _, _ in self.fake.echoes:
            self.assertTrue(uri.startswith(b"/v1/"), uri)
