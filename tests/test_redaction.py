"""
Secrets never reach callers nor logs (issue 19, item 1): an upstream whose errors quote the key
it was sent, or an HTML page holding it and a key-shaped string, is answered scrubbed on every
endpoint family; a caller's own key sent as a model name is not echoed back.
"""

from __future__ import annotations

from typing import Any

import orjson
import treq
from twisted.internet import reactor
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.gateway_harness import CONFIG, GatewayTestCase
from txgateway.dialects.redact import REDACTED, Redactor

OPENAI_SECRET = "echo-provider-secret-value"
CLAUDE_SECRET = "claude-provider-secret-value"
#: Shaped like a key, configured nowhere: the HTML page quotes it.
STRAY_KEY = "sk-proj-Xy7strayKeyNobodyConfigured0123"

ECHO_CONFIG = (
    CONFIG.replace("providers:\n", "providers:\n"
                   "  echo:\n    plugin: openai\n"
                   "    base_url: http://127.0.0.1:{echo_port}/v1\n"
                   f"    api_key: {OPENAI_SECRET}\n"
                   "  echo-claude:\n    plugin: anthropic\n"
                   "    base_url: http://127.0.0.1:{echo_port}\n"
                   f"    api_key: {CLAUDE_SECRET}\n")
    .replace("models:\n", "models:\n"
             "  - name: echo\n    provider: echo\n"
             "  - name: echo-html\n    provider: echo\n    model: html\n"
             "  - name: echo-midstream\n    provider: echo\n    model: midstream\n"
             "  - name: echo-claude\n    provider: echo-claude\n")
)


class EchoingUpstream(Resource):
    """Refuses every call with an error that quotes the credential it was sent."""

    isLeaf = True

    def render_POST(self, request: Any) -> bytes:
        sent = (request.getHeader(b"authorization") or request.getHeader(b"x-api-key") or b"")
        key = sent.decode().removeprefix("Bearer ")
        call = orjson.loads(request.content.read())
        model = call.get("model")
        if model == "midstream" and call.get("stream"):
            request.setHeader(b"content-type", b"text/event-stream")
            chunk = {"id": "c", "object": "chat.completion.chunk", "model": model,
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]}
            error = {"error": {"message": f"key {key} revoked", "type": "server_error"}}
            return (b"data: " + orjson.dumps(chunk) + b"\n\ndata: " + orjson.dumps(error)
                    + b"\n\n")
        if model == "html":
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/html")
            return f"<html>proxy error for {key} ({STRAY_KEY})</html>".encode()
        request.setResponseCode(401)
        request.setHeader(b"content-type", b"application/json")
        message = f"Incorrect API key provided: {key}"
        if request.path.endswith(b"/messages"):
            return orjson.dumps({"type": "error", "error": {
                "type": "authentication_error", "message": message}})
        return orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                       "param": None, "code": "invalid_api_key"}})


MESSAGES = [{"role": "user", "content": "hi"}]


class RedactionTests(GatewayTestCase):
    config = ECHO_CONFIG

    async def _start(self) -> None:
        self.echo_port = reactor.listenTCP(0, Site(EchoingUpstream()), interface="127.0.0.1")
        self.addCleanup(self.echo_port.stopListening)
        self.config = ECHO_CONFIG.replace("{echo_port}", str(self.echo_port.getHost().port))
        await super()._start()

    async def call(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        response = await treq.post(self.base_url + path, orjson.dumps(body), pool=self.pool,
                                   headers={b"content-type": [b"application/json"],
                                            b"anthropic-version": [b"2023-06-01"]})
        return response.code, await response.content()

    async def test_no_endpoint_passes_a_provider_key_on(self) -> None:
        calls = [("/v1/chat/completions", {"model": model, "messages": MESSAGES, **stream})
                 for model in ("echo", "echo-claude") for stream in ({}, {"stream": True})]
        calls += [("/v1/messages", {"model": model, "max_tokens": 5, "messages": MESSAGES,
                                    **stream})
                  for model in ("echo", "echo-claude") for stream in ({}, {"stream": True})]
        calls += [("/v1/embeddings", {"model": "echo", "input": "hi"}),
                  ("/v1/responses", {"model": "echo", "input": "hi"}),
                  ("/v1/responses", {"model": "echo-claude", "input": "hi"}),
                  ("/p/echo/chat/completions", {"model": "echo", "messages": MESSAGES}),
                  ("/p/echo-claude/v1/messages", {"model": "echo", "messages": MESSAGES})]
        for path, body in calls:
            status, answer = await self.call(path, body)
            case = (path, body, answer)
            self.assertEqual(status, 401, case)
            self.assertIn(b"Incorrect API key provided: " + REDACTED.encode(), answer, case)
            self.assertNotIn(OPENAI_SECRET.encode(), answer, case)
            self.assertNotIn(CLAUDE_SECRET.encode(), answer, case)
        self._check_log_clean()

    async def test_an_html_page_is_scrubbed_of_keys_configured_or_not(self) -> None:
        for path, body in [("/v1/chat/completions", {"model": "echo-html", "messages": MESSAGES}),
                           ("/v1/messages", {"model": "echo-html", "max_tokens": 5,
                                             "messages": MESSAGES})]:
            status, answer = await self.call(path, body)
            self.assertEqual(status, 502, answer)
            self.assertIn(b"proxy error for " + REDACTED.encode(), answer)
            self.assertNotIn(OPENAI_SECRET.encode(), answer)
            self.assertNotIn(STRAY_KEY.encode(), answer)
        self._check_log_clean()

    async def test_an_error_event_mid_stream_is_scrubbed(self) -> None:
        for path, body in [("/v1/chat/completions", {"model": "echo-midstream",
                                                      "messages": MESSAGES}),
                           ("/v1/messages", {"model": "echo-midstream", "max_tokens": 5,
                                             "messages": MESSAGES})]:
            status, answer = await self.call(path, {**body, "stream": True})
            self.assertEqual(status, 200, answer)
            self.assertIn(b"key " + REDACTED.encode() + b" revoked", answer, path)
            self.assertNotIn(OPENAI_SECRET.encode(), answer, path)
        records = self.access_records()
        self.assertEqual([record["status"] >= 500 for record in records], [True, True])
        self._check_log_clean()

    def _check_log_clean(self) -> None:
        with open(self.access_log_path, "rb") as log:
            written = log.read()
        for secret in (OPENAI_SECRET, CLAUDE_SECRET, STRAY_KEY):
            self.assertNotIn(secret.encode(), written)


TEAM_KEY = "sk-gw-teamKeyForTheRedactionTests0123"
KEYED_CONFIG = CONFIG.replace("models:\n", f"keys:\n  - name: team\n    key: {TEAM_KEY}\n"
                              "models:\n").replace('  - name: "*"\n    provider: fake\n', "")


class OwnKeyAsModelTests(GatewayTestCase):
    config = KEYED_CONFIG

    async def test_a_key_sent_as_the_model_is_not_echoed(self) -> None:
        for model in (TEAM_KEY, "sk-gw-someoneElsesKey0123456789"):
            response = await treq.post(
                self.base_url + "/v1/chat/completions",
                orjson.dumps({"model": model, "messages": MESSAGES}), pool=self.pool,
                headers={b"content-type": [b"application/json"],
                         b"authorization": [b"Bearer " + TEAM_KEY.encode()]})
            answer = await response.content()
            self.assertEqual(response.code, 404, answer)
            self.assertNotIn(model.encode(), answer)
            self.assertIn(REDACTED.encode(), answer)
        self.service.access_log.flush()
        with open(self.access_log_path, "rb") as log:
            written = log.read()
        self.assertNotIn(b"sk-gw-", written)


class RedactorTests(TestCase):
    def test_secrets_and_shapes(self) -> None:
        redactor = Redactor(("short", "configured-secret-1"))
        said = redactor.text("short configured-secret-1 AKIAABCDEFGHIJKLMNOP Bearer abc.def-"
                             "ghijklmnop ek_abcdefghijklmnop")
        self.assertEqual(said, f"short {REDACTED} {REDACTED} Bearer {REDACTED} {REDACTED}")
        self.assertEqual(redactor.bytes(b'{"m":"sk-ant-api03-abcdefghijkl"}'),
                         b'{"m":"' + REDACTED.encode() + b'"}')
