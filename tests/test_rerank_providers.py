"""
``/v2/rerank`` end to end over raw HTTP to the clouds' own ranking APIs: Bedrock's Rerank
(against the fake Bedrock, which checks every SigV4 signature) and Vertex AI's ranking API
(against the fake Google, with a minted service account token).  Their answers come back in
Cohere's v2 shape, best first, with the search units billed.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import orjson
from twisted.trial.unittest import SynchronousTestCase

from tests.fake_bedrock import ACCESS_KEY, REGION
from tests.fake_cohere import scores
from tests.test_bedrock import RERANK_ARN, BedrockTestCase
from tests.test_vertex import VertexTestCase
from txgateway.translate import rerank

QUERY = "capital of France"
DOCUMENTS = ["Reranking is fun", "Berlin is the capital of Germany",
             "Paris is the capital of France"]
#: What the fakes rank first to last: indexes 2, 1, 0.
RANKED = scores(QUERY, DOCUMENTS)


class RerankCalls:
    """POSTs Cohere v2 rerank requests to the gateway."""

    post: Any

    async def rerank(self, model: str, **fields: object) -> tuple[int, dict[str, Any], Any]:
        """The status, the answer and the response."""
        body = {"model": model, "query": QUERY, "documents": DOCUMENTS, **fields}
        response = await self.post("/v2/rerank", orjson.dumps(body))
        return response.code, orjson.loads(await response.content()), response


class BedrockRerankTests(RerankCalls, BedrockTestCase):
    async def test_rerank(self) -> None:
        """A signed Rerank call to the agent runtime; the answer is Cohere's, best first."""
        status, answer, _ = await self.rerank("amazon.rerank-v1:0", top_n=2)
        self.assertEqual(status, 200, answer)
        self.assertEqual([(r["index"], r["relevance_score"]) for r in answer["results"]],
                         RANKED[:2])
        self.assertEqual(answer["meta"]["billed_units"], {"search_units": 1})
        self.assertIsInstance(answer["id"], str)
        self.assertNotIn("document", answer["results"][0])
        path, headers, body = self.bedrock.requests[0]
        self.assertEqual(path, b"/rerank")
        self.assertIn(f"Credential={ACCESS_KEY}/".encode(), headers[b"Authorization"][0])
        self.assertIn(f"/{REGION}/bedrock/aws4_request".encode(), headers[b"Authorization"][0])
        self.assertEqual(body, {
            "queries": [{"type": "TEXT", "textQuery": {"text": QUERY}}],
            "sources": [{"type": "INLINE", "inlineDocumentSource": {
                "type": "TEXT", "textDocument": {"text": text}}} for text in DOCUMENTS],
            "rerankingConfiguration": {"type": "BEDROCK_RERANKING_MODEL",
                                       "bedrockRerankingConfiguration": {
                                           "modelConfiguration": {"modelArn": (
                                               f"arn:aws:bedrock:{REGION}::foundation-model/"
                                               "amazon.rerank-v1:0")},
                                           "numberOfResults": 2}}})
        [record] = self.access_records()
        self.assertEqual((record["route"], record["provider"], record["upstream_model"],
                          record["status"], record["search_units"], record["usage_estimated"]),
                         ("rerank", "bedrock", "amazon.rerank-v1:0", 200, 1, True))
        self.assertGreater(record["input_tokens"], 0)

    async def test_all_results_with_documents(self) -> None:
        """Without top_n every document is ranked; object documents and return_documents."""
        status, answer, _ = await self.rerank(
            "cohere.rerank-v3-5:0", documents=[{"text": text} for text in DOCUMENTS],
            return_documents=True)
        self.assertEqual(status, 200, answer)
        self.assertEqual([(r["index"], r["relevance_score"], r["document"]["text"])
                          for r in answer["results"]],
                         [(index, score, DOCUMENTS[index]) for index, score in RANKED])
        configuration = self.bedrock.requests[0][2]["rerankingConfiguration"]
        self.assertEqual(configuration["bedrockRerankingConfiguration"]["numberOfResults"], 3)

    async def test_search_units(self) -> None:
        """A search unit per 100 documents, as Bedrock bills."""
        status, answer, _ = await self.rerank("amazon.rerank-v1:0", top_n=1,
                                              documents=DOCUMENTS * 50)
        self.assertEqual((status, answer["meta"]["billed_units"]), (200, {"search_units": 2}))
        self.assertEqual(len(self.bedrock.requests[0][2]["sources"]), 150)
        self.assertEqual(self.access_records()[0]["search_units"], 2)

    async def test_model_arn(self) -> None:
        """A route's model that is an ARN already goes as it is."""
        status, _, _ = await self.rerank("rerank-arn")
        self.assertEqual(status, 200)
        configuration = self.bedrock.requests[0][2]["rerankingConfiguration"]
        self.assertEqual(
            configuration["bedrockRerankingConfiguration"]["modelConfiguration"]["modelArn"],
            RERANK_ARN)

    async def test_errors(self) -> None:
        """Bedrock's errors in Cohere's shape, their status and Retry-After kept."""
        for status in (400, 403, 429, 503):
            got, answer, response = await self.rerank(f"fake.error-{status}")
            self.assertEqual((got, answer), (status, {"message": f"fake bedrock error {status}"}))
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), None)
        _, _, response = await self.rerank("fake.error-429")
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"7"])

    async def test_bad_signature(self) -> None:
        status, answer, _ = await self.rerank("wrong-key")
        self.assertEqual(status, 403)
        self.assertIn("signature we calculated does not match", answer["message"])

    async def test_bad_input_not_sent(self) -> None:
        status, answer, _ = await self.rerank("amazon.rerank-v1:0", top_n=0)
        self.assertEqual((status, list(answer)), (400, ["message"]))
        self.assertEqual(self.bedrock.requests, [])


class VertexRerankTests(RerankCalls, VertexTestCase):
    async def test_rerank(self) -> None:
        """The ranking API with the minted token; ids back to indexes, Cohere's shape."""
        status, answer, _ = await self.rerank("semantic-ranker-default@latest", top_n=2)
        self.assertEqual(status, 200, answer)
        self.assertEqual([(r["index"], r["relevance_score"]) for r in answer["results"]],
                         [(index, round(score, 2)) for index, score in RANKED[:2]])
        self.assertEqual(answer["meta"]["billed_units"], {"search_units": 1})
        path, headers, body = self.last_request()
        self.assertEqual(unquote(path.decode()), "/v1/projects/proj-1/locations/global/"
                                                 "rankingConfigs/default_ranking_config:rank")
        self.assertEqual(headers[b"Authorization"], [b"Bearer ya29.fake-1"])
        self.assertEqual(body, {
            "model": "semantic-ranker-default@latest", "query": QUERY, "topN": 2,
            "records": [{"id": str(index), "content": text}
                        for index, text in enumerate(DOCUMENTS)],
            "ignoreRecordDetailsInResponse": True})
        [record] = self.access_records()
        self.assertEqual((record["route"], record["provider"], record["status"],
                          record["search_units"]), ("rerank", "vertex", 200, 1))

    async def test_all_results_with_documents(self) -> None:
        status, answer, _ = await self.rerank("semantic-ranker-default@latest",
                                              return_documents=True)
        self.assertEqual(status, 200, answer)
        self.assertEqual([(r["index"], r["document"]) for r in answer["results"]],
                         [(index, {"text": DOCUMENTS[index]}) for index, _ in RANKED])
        scores_back = [r["relevance_score"] for r in answer["results"]]
        self.assertEqual(scores_back, sorted(scores_back, reverse=True))
        self.assertNotIn("topN", self.last_request()[2])

    async def test_errors(self) -> None:
        """Google's errors in Cohere's shape, by their message, status and Retry-After kept."""
        status, answer, response = await self.rerank("vx-rank-error-429")
        self.assertEqual((status, answer), (429, {"message": "fake ranking error 429"}))
        self.assertEqual(response.headers.getRawHeaders(b"retry-after"), [b"7"])
        status, answer, _ = await self.rerank("vx-rank-unknown")
        self.assertEqual((status, answer),
                         (400, {"message": "Request contains an invalid argument."}))

    async def test_token_refused(self) -> None:
        """A failed mint is a 502 that says why, in Cohere's shape; nothing is ranked."""
        self.google.refuse_tokens = True
        status, answer, _ = await self.rerank("semantic-ranker-default@latest")
        self.assertEqual(status, 502)
        self.assertIn("invalid_grant", answer["message"])
        self.assertEqual(self.google.requests, [])


class AnswerTests(SynchronousTestCase):
    """What the fakes do not send: results out of order, a zero score left out."""

    def test_sorted_best_first(self) -> None:
        answer = rerank.bedrock_answer({"results": [
            {"index": 0, "relevanceScore": 0.1}, {"index": 1, "relevanceScore": 0.9},
            {"index": 2, "relevanceScore": 0.5}]})
        self.assertEqual([(r["index"], r["relevance_score"]) for r in answer["results"]],
                         [(1, 0.9), (2, 0.5), (0, 0.1)])

    def test_vertex_missing_score(self) -> None:
        answer = rerank.vertex_answer({"records": [{"id": "1"}, {"id": "0", "score": 0.7}]})
        self.assertEqual([(r["index"], r["relevance_score"]) for r in answer["results"]],
                         [(0, 0.7), (1, 0.0)])
