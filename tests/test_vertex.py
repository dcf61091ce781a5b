"""
Vertex AI: Gemini and Claude models through a running gateway with the openai and anthropic
SDKs, against the fake Google server, with OAuth tokens minted from a test service account
(a fresh RSA key) whose JWT assertions the fake's token endpoint verifies.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from array import array
from typing import Any

import anthropic
import openai
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool

from tests.fake_anthropic import FINAL_USAGE
from tests.fake_anthropic import TEXT as CLAUDE_TEXT
from tests.fake_gemini import TEXT, start_fake_google
from tests.test_chat import MESSAGES, collect_stream
from tests.test_gemini import GoogleTestCase, google_config
from tests.test_messages import final_message
from txgateway.config import ConfigError
from txgateway.plugins.vertex import VertexProvider, VertexSettings
from txgateway.plugins.vertex.google_auth import REFRESH_MARGIN, ServiceAccountTokens, TokenError
from txgateway.providers import ApiCall, ProviderContext, dialect

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EMAIL = "gateway@proj-1.iam.gserviceaccount.com"
PREFIX = b"/v1/projects/proj-1/locations/europe-west4/publishers/"
VERTEX_PROVIDERS = """
  vertex:
    plugin: vertex
    project: proj-1
    location: europe-west4
    base_url: http://127.0.0.1:{google_port}
    discovery_engine_url: http://127.0.0.1:{google_port}
    credentials_file: {credentials}
  vertex-static:
    plugin: vertex
    project: proj-2
    access_token: static-token
    base_url: http://127.0.0.1:{google_port}
"""
ROUTES = {"vx-flash": ("vertex", "gemini-2.5-flash"),
          "vx-claude": ("vertex", "claude-sonnet-4"),
          "vx-claude-error": ("vertex", "claude-error-429"),
          "vx-claude-stream-error": ("vertex", "claude-stream-error"),
          "vx-error": ("vertex", "gemini-error-403"),
          "static-flash": ("vertex-static", "gemini-2.5-flash"),
          "text-embedding-005": ("vertex", "text-embedding-005"),
          "vx-embed-error": ("vertex", "error-429"),
          "semantic-ranker-default@latest": ("vertex", "semantic-ranker-default@latest"),
          "vx-rank-error-429": ("vertex", "error-429"),
          "vx-rank-unknown": ("vertex", "unknown-ranker")}
VERTEX_MODELS = "".join(f"  - name: {name}\n    provider: {provider}\n    model: {model}\n"
                        for name, (provider, model) in ROUTES.items())


def service_account(token_uri: str) -> dict[str, Any]:
    pem = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "proj-1", "private_key_id": "kid-1",
            "private_key": pem, "client_email": EMAIL, "token_uri": token_uri}


class VertexTestCase(GoogleTestCase):
    """The harness with Vertex AI providers whose service account the fake Google knows."""

    config = google_config(VERTEX_PROVIDERS, VERTEX_MODELS)

    async def _start(self) -> None:
        # The key file names the token endpoint, whose port is known once the fake listens.
        self.google, self.google_port, self.google_site = await start_fake_google(
            KEY.public_key())
        port = str(self.google_port.getHost().port)
        directory = tempfile.mkdtemp()
        credentials = os.path.join(directory, "account.json")
        with open(credentials, "w") as key_file:
            json.dump(service_account(self.google.token_uri), key_file)
        self.config = (self.config.replace("{google_port}", port)
                       .replace("{credentials}", credentials))
        self.addCleanup(self._stop_google)
        await super(GoogleTestCase, self)._start()


class VertexTests(VertexTestCase):
    async def test_gemini_model(self) -> None:
        """A minted token, reused by the next call; the Gemini translation on Vertex's path."""
        for _ in range(2):
            answer = await self.sdk(self.client.chat.completions.create, model="vx-flash",
                                    messages=MESSAGES)
            self.assertEqual(answer.choices[0].message.content, "".join(TEXT))
        self.assertEqual(answer.usage.prompt_tokens_details.cached_tokens, 12)
        path, headers, body = self.last_request()
        self.assertEqual(path, PREFIX + b"google/models/gemini-2.5-flash:generateContent")
        self.assertEqual(headers[b"Authorization"], [b"Bearer ya29.fake-1"])
        self.assertEqual(body["contents"], [{"role": "user", "parts": [{"text": "Say hello"}]}])
        [claims] = self.google.mints
        self.assertEqual(claims["iss"], EMAIL)

    async def test_gemini_stream_to_messages_caller(self) -> None:
        events, message = await self.sdk(final_message, self.anthropic, model="vx-flash",
                                         max_tokens=100, messages=MESSAGES)
        self.assertEqual(message.content[0].text, "".join(TEXT))
        self.assertEqual(self.last_request()[0],
                         PREFIX + b"google/models/gemini-2.5-flash:streamGenerateContent")

    async def test_static_token(self) -> None:
        self.google.issued.add("static-token")
        await self.sdk(self.client.chat.completions.create, model="static-flash",
                       messages=MESSAGES)
        path, headers, _ = self.last_request()
        self.assertTrue(path.startswith(b"/v1/projects/proj-2/locations/us-central1/"))
        self.assertEqual(headers[b"Authorization"], [b"Bearer static-token"])
        self.assertEqual(self.google.mints, [])

    async def test_static_token_refused(self) -> None:
        with self.assertRaises(openai.AuthenticationError) as raised:
            await self.sdk(self.client.chat.completions.create, model="static-flash",
                           messages=MESSAGES)
        self.assertEqual(raised.exception.body["code"], "unauthenticated")

    async def test_service_account_refused(self) -> None:
        """A failed mint answers at once with a 502 that says why."""
        self.google.refuse_tokens = True
        with self.assertRaises(openai.APIStatusError) as raised:
            await self.sdk(self.client.chat.completions.create, model="vx-flash",
                           messages=MESSAGES)
        self.assertEqual(raised.exception.status_code, 502)
        self.assertIn("invalid_grant", raised.exception.message)
        [record] = self.access_records()
        self.assertEqual(record["status"], 502)

    async def test_claude_chat(self) -> None:
        answer = await self.sdk(self.client.chat.completions.create, model="vx-claude",
                                messages=MESSAGES, max_tokens=64)
        self.assertEqual(answer.choices[0].message.content, "".join(CLAUDE_TEXT))
        self.assertEqual(answer.usage.completion_tokens, FINAL_USAGE["output_tokens"])
        path, _, body = self.last_request()
        self.assertEqual(path, PREFIX + b"anthropic/models/claude-sonnet-4:rawPredict")
        self.assertEqual(body, {"messages": [{"role": "user", "content": [
            {"type": "text", "text": "Say hello"}]}], "max_tokens": 64,
            "anthropic_version": "vertex-2023-10-16"})

    async def test_claude_chat_stream(self) -> None:
        stream = await self.sdk(self.client.chat.completions.create, model="vx-claude",
                                messages=MESSAGES, stream=True,
                                stream_options={"include_usage": True})
        chunks = await self.sdk(collect_stream, stream)
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                         "".join(CLAUDE_TEXT))
        self.assertEqual(chunks[-1].usage.completion_tokens, FINAL_USAGE["output_tokens"])
        self.assertEqual(self.last_request()[0],
                         PREFIX + b"anthropic/models/claude-sonnet-4:streamRawPredict")

    async def test_claude_messages_native(self) -> None:
        """A Messages caller's body goes to Claude as it came, less the model."""
        answer = await self.sdk(self.anthropic.messages.create, model="vx-claude",
                                max_tokens=100, messages=MESSAGES, extra_body={"top_k": 3},
                                extra_headers={"anthropic-beta": "context-1m-2025-08-07"})
        self.assertEqual(answer.content[0].text, "".join(CLAUDE_TEXT))
        self.assertEqual(answer.usage.cache_read_input_tokens,
                         FINAL_USAGE["cache_read_input_tokens"])
        _, headers, body = self.last_request()
        self.assertEqual(body, {"max_tokens": 100, "messages": MESSAGES, "top_k": 3,
                                "anthropic_version": "vertex-2023-10-16"})
        self.assertEqual(headers[b"Anthropic-Beta"], [b"context-1m-2025-08-07"])
        events, message = await self.sdk(final_message, self.anthropic, model="vx-claude",
                                         max_tokens=100, messages=MESSAGES)
        self.assertEqual(message.content[0].text, "".join(CLAUDE_TEXT))
        self.assertEqual(self.access_records()[-1]["output_tokens"],
                         FINAL_USAGE["output_tokens"])

    async def test_errors(self) -> None:
        with self.assertRaises(openai.RateLimitError) as raised:
            await self.sdk(self.client.chat.completions.create, model="vx-claude-error",
                           messages=MESSAGES)
        self.assertEqual(raised.exception.body["message"], "fake anthropic error 429")
        self.assertEqual(raised.exception.response.headers["retry-after"], "7")
        with self.assertRaises(openai.PermissionDeniedError):
            await self.sdk(self.client.chat.completions.create, model="vx-error",
                           messages=MESSAGES)
        with self.assertRaises(anthropic.RateLimitError):
            await self.sdk(self.anthropic.messages.create, model="vx-claude-error",
                           max_tokens=10, messages=MESSAGES)

    async def test_claude_stream_error(self) -> None:
        stream = await self.sdk(self.client.chat.completions.create,
                                model="vx-claude-stream-error", messages=MESSAGES,
                                stream=True)
        with self.assertRaises(openai.APIError) as raised:
            await self.sdk(collect_stream, stream)
        self.assertIn("Overloaded", str(raised.exception))


def vector(text: str, size: int) -> list[float]:
    """The fake's embedding of ``text``."""
    return [len(text) + index / 8 for index in range(size)]


class EmbeddingsTests(VertexTestCase):
    """Text embedding models' ``:predict``, through the openai SDK."""

    async def test_float(self) -> None:
        answer = await self.sdk(self.client.embeddings.create, model="text-embedding-005",
                                input=["hello world", "bonjour"], dimensions=3,
                                encoding_format="float")
        self.assertEqual([item.embedding for item in answer.data],
                         [vector("hello world", 3), vector("bonjour", 3)])
        self.assertEqual([item.index for item in answer.data], [0, 1])
        self.assertEqual((answer.usage.prompt_tokens, answer.usage.total_tokens), (3, 3))
        path, headers, body = self.last_request()
        self.assertEqual(path, PREFIX + b"google/models/text-embedding-005:predict")
        self.assertEqual(headers[b"Authorization"], [b"Bearer ya29.fake-1"])
        self.assertEqual(body, {"instances": [{"content": "hello world"}, {"content": "bonjour"}],
                                "parameters": {"autoTruncate": False,
                                               "outputDimensionality": 3}})
        [record] = self.access_records()
        self.assertEqual((record["route"], record["provider"], record["status"],
                          record["input_tokens"], record["usage_estimated"]),
                         ("embeddings", "vertex", 200, 3, False))

    async def test_base64(self) -> None:
        """The SDK's default: base64 float32 vectors, encoded by the gateway, decoded by it."""
        answer = await self.sdk(self.client.embeddings.create, model="text-embedding-005",
                                input="hello world")
        self.assertEqual(answer.data[0].embedding, vector("hello world", 4))
        raw = await self.post("/v1/embeddings", orjson.dumps({
            "model": "text-embedding-005", "input": "hi", "encoding_format": "base64"}))
        encoded = orjson.loads(await raw.content())["data"][0]["embedding"]
        self.assertEqual(list(array("f", base64.b64decode(encoded))), vector("hi", 4))

    async def test_task_type(self) -> None:
        """A caller's ``task_type`` (an extra field) reaches every instance."""
        await self.sdk(self.client.embeddings.create, model="text-embedding-005",
                       input=["a", "b"], encoding_format="float",
                       extra_body={"task_type": "RETRIEVAL_DOCUMENT"})
        self.assertEqual(self.last_request()[2]["instances"],
                         [{"content": "a", "task_type": "RETRIEVAL_DOCUMENT"},
                          {"content": "b", "task_type": "RETRIEVAL_DOCUMENT"}])

    async def test_refused(self) -> None:
        """Too long an input is Google's 400, token arrays the gateway's; errors keep status."""
        with self.assertRaises(openai.BadRequestError) as raised:
            await self.sdk(self.client.embeddings.create, model="text-embedding-005",
                           input="word " * 60)
        self.assertIn("token count is too large", raised.exception.message)
        with self.assertRaises(openai.BadRequestError) as raised:
            await self.sdk(self.client.embeddings.create, model="text-embedding-005",
                           input=[[1, 2, 3]])
        self.assertIn("text only", raised.exception.message)
        with self.assertRaises(openai.RateLimitError) as raised:
            await self.sdk(self.client.embeddings.create, model="vx-embed-error", input="a")
        self.assertEqual(raised.exception.body["code"], "resource_exhausted")
        self.assertEqual(len(self.google.requests), 2)


class ProviderTests(TestCase):
    def test_global_location_and_dialects(self) -> None:
        provider = VertexProvider("v", VertexSettings(project="p", location="global",
                                                      access_token="t"),
                                  ProviderContext(reactor=Clock(), http_agent=None))
        request = provider.build_request(ApiCall(api="chat", body=b"", parsed={
            "messages": MESSAGES}, model="gemini-3-pro", stream=True))
        self.assertEqual(request.url, b"https://aiplatform.googleapis.com/v1/projects/p/"
                                      b"locations/global/publishers/google/models/"
                                      b"gemini-3-pro:streamGenerateContent?alt=sse")
        self.assertEqual((dialect(provider, "claude-opus-4"), dialect(provider, "gemini-3"),
                          dialect(provider)), ("anthropic", "gemini", "gemini"))
        self.assertIsNone(provider.prepare())


    def test_missing_key_file(self) -> None:
        with self.assertRaises(ConfigError) as raised:
            VertexProvider("v", VertexSettings(project="p", credentials_file="/nonexistent"),
                           ProviderContext(reactor=Clock(), http_agent=None))
        self.assertIn("providers.v.credentials_file", str(raised.exception))


class TokenTests(TestCase):
    """Minting, caching and refreshing on a clock, against the fake token endpoint."""

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self.google, port, site = await start_fake_google(KEY.public_key())
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.tokens = ServiceAccountTokens(self.clock, Agent(reactor, pool=pool),
                                           service_account(self.google.token_uri))

        async def stop() -> None:
            await port.stopListening()
            await site.close_connections()

        self.addCleanup(stop)

    async def test_refreshed_before_expiry(self) -> None:
        self.assertEqual(await self.tokens.token(), "ya29.fake-1")
        self.clock.advance(3600 - REFRESH_MARGIN - 1)
        self.assertEqual(await self.tokens.token(), "ya29.fake-1")
        self.clock.advance(1)
        self.assertIsNone(self.tokens.current)
        self.assertEqual(await self.tokens.token(), "ya29.fake-2")
        self.assertEqual(len(self.google.mints), 2)
        self.assertEqual(self.google.mints[1]["iat"], 1_700_000_000 + 3600 - REFRESH_MARGIN)

    async def test_one_mint_in_flight(self) -> None:
        self.google.held_tokens = []
        waiting = [self.tokens.token() for _ in range(3)]
        while not self.google.held_tokens:  # the one request reaches the fake
            await _turn()
        self.google.release_tokens()
        self.assertEqual(await gatherResults(waiting), ["ya29.fake-1"] * 3)
        self.assertEqual(len(self.google.mints), 1)

    async def test_refused(self) -> None:
        self.google.refuse_tokens = True
        with self.assertRaises(TokenError) as raised:
            await self.tokens.token()
        self.assertIn("invalid_grant: Invalid JWT Signature.", str(raised.exception))
        self.google.refuse_tokens = False
        self.assertEqual(await self.tokens.token(), "ya29.fake-1")  # the next call retries

    def test_not_a_key(self) -> None:
        with self.assertRaises(ValueError):
            ServiceAccountTokens(self.clock, None, {"client_email": EMAIL,
                                                    "private_key": "nope"})


def _turn() -> Deferred[None]:
    """One reactor turn."""
    waiting: Deferred[None] = Deferred()
    reactor.callLater(0, waiting.callback, None)
    return waiting
