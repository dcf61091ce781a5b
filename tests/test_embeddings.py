"""End to end: ``/v1/embeddings`` through the gateway, with the openai SDK."""

from __future__ import annotations

import base64
import struct

import orjson
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from tests.fake_gemini import API_KEY, start_fake_google
from tests.fake_openai_rest import EMBEDDING_USAGE, embedding
from tests.gateway_harness import CONFIG, GatewayTestCase
from txgateway.dialects.openai_rest import RestRequest, encode_embeddings_base64, usage_of
from txgateway.providers import ApiCall, IProvider, UpstreamRequest
from txgateway.usage import Usage
from txgateway.web.embeddings import TranslatedEmbeddings


class EmbeddingsTests(GatewayTestCase):
    async def test_base64_default(self) -> None:
        """The SDK asks for base64 by default: the upstream's base64 reaches it untouched."""
        answer = await self.sdk(self.client.embeddings.create, model="text-embedding-3-small",
                                input="hello")
        self.assertEqual(answer.data[0].embedding, embedding(0, 3))
        self.assertEqual(answer.usage.prompt_tokens, EMBEDDING_USAGE["prompt_tokens"])
        path, headers, body = self.fake.requests[0]
        self.assertEqual(path, b"/v1/embeddings")
        self.assertEqual(body["encoding_format"], "base64")
        [record] = self.access_records()
        self.assertEqual((record["route"], record["input_tokens"], record["output_tokens"]),
                         ("embeddings", 7, 0))

    async def test_float_batch_dimensions(self) -> None:
        answer = await self.sdk(self.client.embeddings.create, model="renamed",
                                input=["a", "b", "c"], encoding_format="float", dimensions=4)
        self.assertEqual([item.embedding for item in answer.data],
                         [embedding(index, 4) for index in range(3)])
        self.assertEqual(self.fake.requests[0][2],
                         {"model": "upstream-name", "input": ["a", "b", "c"],
                          "encoding_format": "float", "dimensions": 4})

    async def test_token_inputs(self) -> None:
        answer = await self.sdk(self.client.embeddings.create, model="m",
                                input=[[1, 2], [3]], encoding_format="float")
        self.assertEqual(len(answer.data), 2)

    async def test_demo_deterministic(self) -> None:
        """The demo's vectors: equal inputs equal, unit length, ``dimensions`` honoured."""
        first = await self.sdk(self.client.embeddings.create, model="demo",
                               input=["same", "other", "same"], dimensions=8)
        vectors = [item.embedding for item in first.data]
        self.assertEqual(len(vectors[0]), 8)
        self.assertEqual(vectors[0], vectors[2])
        self.assertNotEqual(vectors[0], vectors[1])
        self.assertAlmostEqual(sum(value * value for value in vectors[0]), 1.0, places=5)
        floats = await self.sdk(self.client.embeddings.create, model="demo", input="same",
                                dimensions=8, encoding_format="float")
        self.assertEqual(floats.data[0].embedding, vectors[0])
        self.assertEqual(floats.usage.prompt_tokens, 1)

    async def test_provider_without_embeddings(self) -> None:
        response = await self.post("/v1/embeddings", orjson.dumps(
            {"model": "claude-sonnet-4", "input": "x"}))
        self.assertEqual(response.code, 400)
        error = (await response.json())["error"]
        self.assertEqual((error["code"], error["param"]), ("unsupported_api", "model"))
        self.assertIn("embeddings", error["message"])

    async def test_bad_requests(self) -> None:
        cases = [
            (b"", None),
            (b"[1]", None),
            (orjson.dumps({"input": "x"}), "model"),
            (orjson.dumps({"model": "m"}), "input"),
            (orjson.dumps({"model": "m", "input": []}), "input"),
            (orjson.dumps({"model": "m", "input": ["a", 1]}), "input"),
            (orjson.dumps({"model": "m", "input": "x", "encoding_format": "int8"}),
             "encoding_format"),
            (orjson.dumps({"model": "m", "input": "x", "dimensions": -1}), "dimensions"),
        ]
        for body, param in cases:
            response = await self.post("/v1/embeddings", body)
            self.assertEqual(response.code, 400, body)
            self.assertEqual((await response.json())["error"]["param"], param)
        self.assertEqual(self.fake.requests, [])


@implementer(IProvider)
class TranslatingEmbedder:
    """A translating provider's half of the contract, as gemini's or bedrock's would be."""

    name = kind = "translating"
    dialect = "other"
    apis = frozenset({"embeddings"})
    agent = None

    def build_request(self, call: ApiCall) -> UpstreamRequest:
        raise NotImplementedError

    def translate_response(self, body: bytes, api: str = "chat") -> tuple[bytes, Usage]:
        assert api == "embeddings"
        vectors = orjson.loads(body)["vectors"]
        return orjson.dumps({"object": "list", "model": "x", "data": [
            {"object": "embedding", "index": index, "embedding": vector}
            for index, vector in enumerate(vectors)]}), Usage(input_tokens=2)

    def translate_error(self, status: int, body: bytes) -> bytes | None:
        return None


class TranslatedEmbeddingsTests(TestCase):
    def test_base64_encoded_by_gateway(self) -> None:
        """Floats from a translating provider become OpenAI's little-endian float32 base64."""
        def codec(encoding: str) -> TranslatedEmbeddings:
            parsed = {"model": "m", "input": "hi", "encoding_format": encoding}
            return TranslatedEmbeddings(TranslatingEmbedder(),
                                        RestRequest(orjson.dumps(parsed), parsed, "m"))

        body, usage = codec("base64").answer(
            orjson.dumps({"vectors": [[0.5, -1.25], [3.0, 0.0]]}))
        data = orjson.loads(body)["data"]
        decoded = [struct.unpack("<2f", base64.b64decode(item["embedding"])) for item in data]
        self.assertEqual(decoded, [(0.5, -1.25), (3.0, 0.0)])
        self.assertEqual(usage, Usage(input_tokens=2))
        plain, _ = codec("float").answer(orjson.dumps({"vectors": [[0.5]]}))
        self.assertEqual(orjson.loads(plain)["data"][0]["embedding"], [0.5])

    def test_encode_matches_sdk_decoding(self) -> None:
        """What the gateway encodes, numpy-free, decodes as the openai SDK does."""
        answer = encode_embeddings_base64({"data": [{"embedding": [0.1, 2.0]}]})
        raw = base64.b64decode(answer["data"][0]["embedding"])
        self.assertEqual(len(raw), 8)
        self.assertAlmostEqual(struct.unpack("<f", raw[:4])[0], 0.1, places=6)
        self.assertEqual(usage_of({"prompt_tokens": 4, "total_tokens": 4}),
                         Usage(input_tokens=4))


GEMINI_CONFIG = CONFIG.replace("providers:\n", """providers:
  gemini:
    plugin: gemini
    base_url: http://127.0.0.1:GEMINI_PORT
    api_key: GEMINI_KEY
""").replace("models:\n", """models:
  - name: "gemini-*"
    provider: gemini
""")


class GeminiEmbeddingsTests(GatewayTestCase):
    """Through a real translating provider: the gateway encodes its floats as asked."""

    async def _start(self) -> None:
        self.google, self.google_port, self.google_site = await start_fake_google()
        self.config = GEMINI_CONFIG.replace(
            "GEMINI_PORT", str(self.google_port.getHost().port)).replace("GEMINI_KEY", API_KEY)
        self.addCleanup(self.google_site.close_connections)
        self.addCleanup(self.google_port.stopListening)
        await super()._start()

    async def test_base64_and_float_agree(self) -> None:
        encoded = await self.sdk(self.client.embeddings.create, model="gemini-embedding-001",
                                 input=["one", "two"], dimensions=3)
        floats = await self.sdk(self.client.embeddings.create, model="gemini-embedding-001",
                                input=["one", "two"], dimensions=3, encoding_format="float")
        self.assertEqual(len(encoded.data), 2)
        self.assertEqual(len(encoded.data[0].embedding), 3)
        for base64_item, float_item in zip(encoded.data, floats.data, strict=True):
            self.assertEqual(base64_item.embedding,
                             [struct.unpack("<f", struct.pack("<f", v))[0]
                              for v in float_item.embedding])
