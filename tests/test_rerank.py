"""
``/v2/rerank`` end to end over raw HTTP: to Cohere's rerank and to a vLLM-style server behind
the openai plugin (the ``vllm`` preset), bad input, and upstream errors in Cohere's shape.
"""

from __future__ import annotations

import orjson
from twisted.trial.unittest import TestCase

from tests.fake_cohere import SEARCH_UNITS, CohereTestCase, scores
from txgateway.dialects.cohere import parse_rerank, rerank_usage
from txgateway.usage import Usage

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
access_log: {access_log}
upstream: {{connect_timeout: 1, first_byte_timeout: 1, idle_timeout: 0.5}}
providers:
  cohere:
    plugin: cohere
    base_url: http://127.0.0.1:{cohere_port}
    api_key: co-upstream-key
  vllm:
    plugin: vllm
    base_url: http://127.0.0.1:{cohere_port}/v1
    api_key: vllm-token
  openai:
    plugin: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
models:
  - name: rerank-v3.5
    provider: cohere
  - name: "error-*"
    provider: cohere
  - name: html-502
    provider: cohere
  - name: bge-reranker
    provider: vllm
    model: BAAI/bge-reranker-base
  - name: vllm-error-400
    provider: vllm
    model: error-400
  - name: vllm-error-503
    provider: vllm
    model: error-503
  - name: gpt-4o
    provider: openai
"""

QUERY = "capital of France"
DOCUMENTS = ["Paris is the capital of France", "Reranking is fun",
             "Berlin is the capital of Germany"]


class RerankTestCase(CohereTestCase):
    config = CONFIG

    async def rerank(self, path: str = "/v2/rerank", **fields: object) -> tuple[int, dict, object]:
        """POST a rerank request: the status, the answer and the response."""
        body = {"model": "rerank-v3.5", "query": QUERY, "documents": DOCUMENTS, **fields}
        response = await self.post(path, orjson.dumps(body))
        return response.code, orjson.loads(await response.content()), response


class ToCohereTests(RerankTestCase):
    async def test_rerank(self) -> None:
        """The answer comes back as Cohere sent it; the key sent is the provider's."""
        status, answer, _ = await self.rerank(top_n=2)
        self.assertEqual(status, 200)
        self.assertEqual([(r["index"], r["relevance_score"]) for r in answer["results"]],
                         scores(QUERY, DOCUMENTS)[:2])
        self.assertEqual(answer["meta"]["billed_units"]["search_units"], SEARCH_UNITS)
        path, headers, body = self.cohere.requests[0]
        self.assertEqual(path, b"/v2/rerank")
        self.assertEqual(headers[b"Authorization"], [b"Bearer co-upstream-key"])
        self.assertEqual(body, {"model": "rerank-v3.5", "query": QUERY,
                                "documents": DOCUMENTS, "top_n": 2})

    async def test_paths(self) -> None:
        """Cohere's path, the same under /cohere (a base URL for the Cohere SDK), /v1."""
        for path in ("/cohere/v2/rerank", "/v1/rerank"):
            status, answer, _ = await self.rerank(path)
            self.assertEqual((status, len(answer["results"])), (200, len(DOCUMENTS)))
        self.assertEqual(len(self.cohere.requests), 2)

    async def test_object_documents_flattened(self) -> None:
        """``{"text": ...}`` documents reach Cohere's v2 as the strings it takes."""
        documents = [{"text": text} for text in DOCUMENTS]
        status, answer, _ = await self.rerank(documents=documents, return_documents=True)
        self.assertEqual(status, 200)
        self.assertEqual(answer["results"][0]["document"], {"text": DOCUMENTS[0]})
        self.assertEqual(self.cohere.requests[0][2]["documents"], DOCUMENTS)

    async def test_usage_logged(self) -> None:
        await self.rerank()
        [record] = self.access_records()
        self.assertEqual((record["route"], record["provider"], record["status"],
                          record["search_units"], record["usage_estimated"]),
                         ("rerank", "cohere", 200, SEARCH_UNITS, True))
        self.assertGreater(record["input_tokens"], 0)

    async def test_errors(self) -> None:
        """Cohere's errors come back as they are, with their status and Retry-After."""
        for status in (400, 401, 404, 429, 500):
            got, answer, response = await self.rerank(model=f"error-{status}")
            self.assertEqual((got, answer), (status, {"id": "fake-error-id",
                                                      "message": f"fake rerank error {status}"}))
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), None)
        got, _, response = await self.rerank(model="error-429")
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"7"])

    async def test_not_json_error(self) -> None:
        status, answer, _ = await self.rerank(model="html-502")
        self.assertEqual(status, 502)
        self.assertIn("Bad gateway", answer["message"])


class ToVLLMTests(RerankTestCase):
    async def test_rerank(self) -> None:
        """The vllm preset serves rerank at ``<base_url>/rerank``; its token usage is read."""
        status, answer, _ = await self.rerank(model="bge-reranker")
        self.assertEqual(status, 200)
        self.assertEqual([r["index"] for r in answer["results"]],
                         [index for index, _ in scores(QUERY, DOCUMENTS)])
        path, headers, body = self.cohere.requests[0]
        self.assertEqual((path, body["model"]), (b"/v1/rerank", "BAAI/bge-reranker-base"))
        self.assertEqual(headers[b"Authorization"], [b"Bearer vllm-token"])
        [record] = self.access_records()
        self.assertEqual((record["input_tokens"], record["search_units"],
                          record["usage_estimated"]),
                         (sum(len(d.split()) for d in DOCUMENTS), 0, False))

    async def test_errors_in_cohere_shape(self) -> None:
        """vLLM's OpenAI-shaped errors reach the caller as Cohere's, status kept."""
        for model, status in (("vllm-error-400", 400), ("vllm-error-503", 503)):
            got, answer, _ = await self.rerank(model=model)
            self.assertEqual((got, answer),
                             (status, {"message": f"fake rerank error {status}"}))


class BadInputTests(RerankTestCase):
    async def check(self, body: bytes, status: int, words: str) -> None:
        response = await self.post("/v2/rerank", body)
        answer = orjson.loads(await response.content())
        self.assertEqual(response.code, status, answer)
        self.assertEqual(list(answer), ["message"])
        self.assertIn(words, answer["message"])

    async def test_bad_requests(self) -> None:
        base = {"model": "rerank-v3.5", "query": QUERY, "documents": DOCUMENTS}
        cases = [
            (b"{not json", "not valid JSON"),
            (b"[]", "JSON object"),
            (orjson.dumps({**base, "model": 3}), "model"),
            (orjson.dumps({k: v for k, v in base.items() if k != "query"}), "'query'"),
            (orjson.dumps({**base, "query": ["x"]}), "'query'"),
            (orjson.dumps({k: v for k, v in base.items() if k != "documents"}), "'documents'"),
            (orjson.dumps({**base, "documents": []}), "'documents'"),
            (orjson.dumps({**base, "documents": "one"}), "'documents'"),
            (orjson.dumps({**base, "documents": ["a", 2]}), "documents[1]"),
            (orjson.dumps({**base, "documents": [{"title": "a"}]}), "documents[0]"),
            (orjson.dumps({**base, "top_n": 0}), "'top_n'"),
            (orjson.dumps({**base, "top_n": "3"}), "'top_n'"),
            (orjson.dumps({**base, "max_tokens_per_doc": True}), "'max_tokens_per_doc'"),
            (orjson.dumps({**base, "return_documents": "yes"}), "'return_documents'"),
        ]
        for body, words in cases:
            await self.check(body, 400, words)
        self.assertEqual(self.cohere.requests, [])

    async def test_unknown_model(self) -> None:
        await self.check(orjson.dumps({"model": "nope", "query": QUERY,
                                       "documents": DOCUMENTS}), 404, "model 'nope' not found")

    async def test_model_without_rerank(self) -> None:
        """A model whose provider serves no rerank (the openai plugin by default) is a 400."""
        await self.check(orjson.dumps({"model": "gpt-4o", "query": QUERY,
                                       "documents": DOCUMENTS}), 400,
                         "does not offer the rerank API")
        self.assertEqual(self.fake.requests, [])


class RerankUsageTests(TestCase):
    """Where each kind of rerank server reports usage."""

    request = parse_rerank(orjson.dumps({"model": "m", "query": "q", "documents": ["a b"]}))

    def test_cohere_meta(self) -> None:
        answer = {"results": [], "meta": {"billed_units": {"search_units": 2.0},
                                          "tokens": {"input_tokens": 40.0}}}
        self.assertEqual(rerank_usage(answer, self.request),
                         Usage(input_tokens=40, search_units=2))

    def test_openai_style_usage(self) -> None:
        answer = {"results": [], "usage": {"prompt_tokens": 9, "total_tokens": 12}}
        self.assertEqual(rerank_usage(answer, self.request), Usage(input_tokens=9))

    def test_estimated_when_unreported(self) -> None:
        usage = rerank_usage({"results": [], "meta": {"billed_units": {}}}, self.request)
        self.assertEqual((usage.input_tokens, usage.search_units, usage.estimated), (1, 0, True))
