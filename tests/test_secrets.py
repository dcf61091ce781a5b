"""
Secrets (issue 16, item 4): provider keys, virtual keys, the admin token, ephemeral secrets and
keys sent as a WebSocket subprotocol appear in no log line, metric, error body, admin answer
nor in the store; including when an upstream echoes its key back in an error.
"""

from __future__ import annotations

import gzip
import os
from typing import Any

import orjson
import psycopg
from twisted.internet import reactor
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.resource import Resource
from twisted.web.server import Site
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as sync_connect

from tests.fuzz_wire import cancel_batched_timers
from tests.gateway_harness import GatewayTestCase, OnPostgreSQL
from tests.raw_http import RawAnswer, send_raw
from tests.test_keys import ADMIN, DEMO_ONLY_KEY, KEYS_CONFIG, TEAM_KEY
from tests.test_store import POSTGRES_URL

ECHOED = "sk-echoed-provider-secret-5150"
#: A caller's mistyped key: the gateway must not repeat it either.
TYPO = "sk-team-typo-0123456789abcdef"

SECRETS_CONFIG = (KEYS_CONFIG.replace("providers:\n", "providers:\n  echoer:\n"
                                      "    plugin: openai\n"
                                      "    base_url: http://127.0.0.1:{echo_port}/v1\n"
                                      f"    api_key: {ECHOED}\n")
                  .replace("models:\n", "models:\n  - name: echo-key\n    provider: echoer\n"))


class KeyEcho(Resource):
    """An upstream that refuses, quoting the key it was sent (as some providers do)."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        sent = (request.getHeader(b"authorization") or b"").decode()
        request.setResponseCode(401)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-echoed-key", sent.encode())
        body = orjson.dumps({"error": {"message": f"Incorrect API key provided: {sent}.",
                                       "type": "invalid_request_error", "code": "invalid_api_key",
                                       "param": None}})
        if request.path.endswith(b"/gzip"):  # as a caller asking for gzip would have it
            request.setHeader(b"content-encoding", b"gzip")
            return gzip.compress(body)
        if request.path.endswith(b"/brotli"):  # a coding the gateway cannot read
            request.setHeader(b"content-encoding", b"br")
        return body


class SecretsTests(GatewayTestCase):
    config = SECRETS_CONFIG
    timeout = 60

    async def _start(self) -> None:
        self.echo_port = reactor.listenTCP(0, Site(KeyEcho()), interface="127.0.0.1")
        self.addCleanup(self.echo_port.stopListening)
        self.config = self.config.replace("{echo_port}", str(self.echo_port.getHost().port))
        self.logged: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            self.logged.append(formatEvent(event) or "")
            failure = event.get("log_failure")
            if failure is not None:
                self.logged.append(failure.getTraceback())
            self.logged.append(repr(event))

        self.addCleanup(cancel_batched_timers, reactor)
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        await super()._start()

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    async def call(self, method: bytes, path: bytes, body: Any = b"",
                   **headers: str) -> RawAnswer:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        head = b"".join(b"%s: %s\r\n" % (name.replace("_", "-").encode(), value.encode())
                        for name, value in headers.items())
        answer = await deferToThread(send_raw, self.port, b"%s %s HTTP/1.1\r\nHost: gw\r\n"
                                     b"Content-Type: application/json\r\nContent-Length: %d\r\n"
                                     b"%sConnection: close\r\n\r\n%s"
                                     % (method, path, len(raw), head, raw))
        self.seen.append(repr(answer))
        return answer

    def upgrade(self, url: str, **kwargs: Any) -> str:
        """Open a realtime session (and close it), or be refused: what the caller saw."""
        try:
            with sync_connect(url, open_timeout=5, **kwargs) as socket:
                return repr(socket.recv(timeout=5))  # session.created
        except InvalidStatus as error:
            return repr((error.response.status_code, error.response.headers,
                         error.response.body))

    async def exercise(self) -> list[str]:
        """Every way a secret could be used or leak; what the callers were answered."""
        self.seen: list[str] = []
        chat = {"model": "gpt-ok", "messages": [{"role": "user", "content": "hi"}]}
        await self.call(b"POST", b"/v1/chat/completions", chat, authorization=f"Bearer {TEAM_KEY}")
        await self.call(b"POST", b"/v1/chat/completions", {**chat, "stream": True},
                        authorization=f"Bearer {TEAM_KEY}")
        await self.call(b"POST", b"/v1/messages", {**chat, "model": "claude-x", "max_tokens": 5},
                        x_api_key=TEAM_KEY, anthropic_version="2023-06-01")
        await self.call(b"POST", b"/v1/chat/completions", chat, authorization=f"Bearer {TYPO}")
        await self.call(b"POST", b"/v1/messages", {**chat, "max_tokens": 5}, x_api_key=TYPO)
        await self.call(b"POST", b"/v1/chat/completions", chat,
                        authorization=f"Bearer {DEMO_ONLY_KEY}")
        await self.call(b"GET", b"/p/fake/echo", authorization=f"Bearer {TEAM_KEY}")
        await self.call(b"GET", b"/admin/keys", authorization=f"Bearer {ADMIN}x")
        await self.call(b"GET", b"/admin/keys", authorization=TYPO)
        made = await self.call(b"POST", b"/admin/keys", {"name": "made", "models": ["demo"]},
                               authorization=f"Bearer {ADMIN}")
        self.seen.pop()  # the one answer that shows a new key, once
        made_key = orjson.loads(made.body)["key"]
        minted = await self.call(b"POST", b"/v1/realtime/client_secrets",
                                 {"session": {"type": "realtime", "model": "demo"}},
                                 authorization=f"Bearer {made_key}")
        self.seen.pop()  # the one answer that shows the ephemeral secret
        ephemeral = orjson.loads(minted.body)["value"]
        await self.call(b"POST", b"/v1/chat/completions", {**chat, "model": "demo"},
                        authorization=f"Bearer {made_key}")
        url = f"ws://127.0.0.1:{self.port}/v1/realtime?model=demo"
        for key in (TEAM_KEY, ephemeral, TYPO, "ek_" + TYPO):
            self.seen.append(await deferToThread(self.upgrade, url, subprotocols=[
                "realtime", f"openai-insecure-api-key.{key}"]))
            self.seen.append(await deferToThread(
                self.upgrade, url, additional_headers={"Authorization": f"Bearer {key}"}))
        # The good keys opened sessions (by subprotocol and by header), the bad ones did not.
        self.assertEqual(sum("session.created" in seen for seen in self.seen), 4)
        for path in (b"/admin/keys", b"/admin/usage", b"/admin/realtime/sessions",
                     b"/admin/providers", b"/admin/keys/cfg_team"):
            await self.call(b"GET", path, authorization=f"Bearer {ADMIN}")
        await self.call(b"GET", b"/metrics")
        await self.call(b"GET", b"/openapi.json")
        await self.ledger_written()
        return [TEAM_KEY, DEMO_ONLY_KEY, ADMIN, TYPO, made_key, ephemeral, "sk-upstream-secret",
                "sk-ant-upstream", ECHOED]

    def store_text(self) -> str:
        directory = os.path.dirname(self.access_log_path)
        texts = []
        for name in os.listdir(directory):  # the SQLite store, its WAL, the access log
            with open(os.path.join(directory, name), "rb") as kept:
                texts.append(kept.read().decode("latin-1"))
        return "\n".join(texts)

    def check(self, secrets: list[str], places: dict[str, str]) -> None:
        found = [(secret, where) for secret in secrets for where, text in places.items()
                 if secret in text]
        self.assertEqual(found, [])

    async def test_no_secret_anywhere(self) -> None:
        secrets = await self.exercise()
        self.service.access_log.flush()
        self.check(secrets, {"answers": "\n".join(self.seen), "log": "\n".join(self.logged),
                             "store and access log": self.store_text()})
        # The calls did run: the ledger and the access log have them.
        self.assertIn('"status":200', self.store_text())

    async def test_an_upstream_echoing_its_key(self) -> None:
        """
        Chat (stream or not), translated messages and passthrough all relay an upstream's
        error that quotes the provider key (and passthrough its headers); and a virtual key
        sent as a model name comes back in the 404.
        """
        self.seen = []
        await self.call(b"POST", b"/v1/chat/completions", {"model": TEAM_KEY, "messages": []},
                        authorization=f"Bearer {TEAM_KEY}")
        chat = {"model": "echo-key", "messages": [{"role": "user", "content": "hi"}]}
        for body in (chat, {**chat, "stream": True}):
            answer = await self.call(b"POST", b"/v1/chat/completions", body,
                                     authorization=f"Bearer {TEAM_KEY}")
            self.assertEqual(answer.status, 401)
        answer = await self.call(b"POST", b"/v1/messages", {**chat, "max_tokens": 5},
                                 x_api_key=TEAM_KEY)
        self.assertGreaterEqual(answer.status, 400)
        await self.call(b"GET", b"/p/echoer/models", authorization=f"Bearer {TEAM_KEY}")
        await self.ledger_written()
        self.service.access_log.flush()
        self.check([ECHOED, TEAM_KEY], {
            "answers": "\n".join(self.seen), "log": "\n".join(self.logged),
            "store and access log": self.store_text()})


    async def test_a_gzipped_error_quoting_the_key(self) -> None:
        """
        A passthrough error answered gzip'd is inflated to be scrubbed, and answered plain;
        one in a coding the gateway cannot read is not relayed at all.
        """
        self.seen = []
        answer = await self.call(b"GET", b"/p/echoer/gzip", authorization=f"Bearer {TEAM_KEY}",
                                 accept_encoding="gzip")
        self.assertEqual(answer.status, 401)
        self.assertNotIn(b"content-encoding", answer.headers)
        self.assertIn(b"Incorrect API key provided: Bearer ", answer.body)
        self.assertEqual(int(answer.headers[b"content-length"]), len(answer.body))
        unread = await self.call(b"GET", b"/p/echoer/brotli",
                                 authorization=f"Bearer {TEAM_KEY}", accept_encoding="br")
        self.assertEqual(unread.status, 401)
        self.assertNotIn(b"content-encoding", unread.headers)
        self.assertEqual(orjson.loads(unread.body)["error"]["code"], "upstream_error")
        self.assertNotIn(ECHOED.encode(), unread.body)
        self.check([ECHOED, TEAM_KEY], {"answers": "\n".join(self.seen)})


class SecretsOnPostgreSQL(OnPostgreSQL, SecretsTests):
    def store_text(self) -> str:
        with psycopg.connect(POSTGRES_URL) as db:
            tables = [row[0] for row in db.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                (self.schema,))]
            self.assertIn("usage_ledger", tables)
            rows = [str(row) for table in tables for row in db.execute(
                f'SELECT t::text FROM {self.schema}."{table}" t')]
        with open(self.access_log_path) as log:
            return "\n".join(rows) + log.read()
