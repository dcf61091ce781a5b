"""
Rerank to the clouds' own ranking APIs, from Cohere's v2 request (what `/v2/rerank` callers
send) and back to its answer: Amazon Bedrock's ``Rerank`` (agent runtime) and Vertex AI's
ranking API (Discovery Engine's ``rankingConfigs:rank``).

The answers carry only what the upstream says (indexes and scores, best first); the endpoint
adds what only the request knows, the documents and the search units billed
(`txgateway.dialects.cohere.completed_answer`).
"""

from __future__ import annotations

import uuid
from typing import Any

#: The options of Cohere's rerank models that Bedrock passes on to them.
COHERE_OPTIONS = ("truncation", "max_tokens_per_doc")


def _texts(rerank: dict[str, Any]) -> list[str]:
    """The documents as strings (``{"text": ...}`` objects flattened; checked on the way in)."""
    return [document if isinstance(document, str) else document["text"]
            for document in rerank["documents"]]


def _results(scored: list[tuple[int, float]]) -> dict[str, Any]:
    """Cohere's v2 answer for (index, score) pairs, best first."""
    scored.sort(key=lambda pair: -pair[1])
    return {"id": str(uuid.uuid4()),
            "results": [{"index": index, "relevance_score": score} for index, score in scored],
            "meta": {"api_version": {"version": "2"}}}


def _score(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def bedrock_model_arn(model: str, region: str) -> str:
    """The ``modelArn`` Rerank wants: a foundation model id made an ARN, an ARN as it is."""
    if model.startswith("arn:"):
        return model
    return f"arn:aws:bedrock:{region}::foundation-model/{model}"


def bedrock_request(rerank: dict[str, Any], model_arn: str) -> dict[str, Any]:
    """
    The ``Rerank`` body: the query, the documents as inline text sources, and as many results
    as ``top_n`` asks (all of them by default, as Cohere answers).  Cohere's own options
    (``truncation``, ``max_tokens_per_doc``) go to the model as they are.
    """
    texts = _texts(rerank)
    model: dict[str, Any] = {"modelArn": model_arn}
    options = {name: rerank[name] for name in COHERE_OPTIONS if name in rerank}
    if options:
        model["additionalModelRequestFields"] = options
    return {
        "queries": [{"type": "TEXT", "textQuery": {"text": rerank["query"]}}],
        "sources": [{"type": "INLINE", "inlineDocumentSource": {
            "type": "TEXT", "textDocument": {"text": text}}} for text in texts],
        "rerankingConfiguration": {"type": "BEDROCK_RERANKING_MODEL",
                                   "bedrockRerankingConfiguration": {
                                       "modelConfiguration": model,
                                       "numberOfResults": rerank.get("top_n") or len(texts)}},
    }


def bedrock_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """Cohere's answer for Rerank's ``results`` of ``index`` and ``relevanceScore``."""
    return _results([(result["index"], _score(result.get("relevanceScore")))
                     for result in answer["results"]])


def vertex_request(rerank: dict[str, Any], model: str) -> dict[str, Any]:
    """
    The ``rank`` body: each document a record whose id is its index; ids and scores only
    come back (the endpoint has the documents).
    """
    body: dict[str, Any] = {
        "model": model, "query": rerank["query"],
        "records": [{"id": str(index), "content": text}
                    for index, text in enumerate(_texts(rerank))],
        "ignoreRecordDetailsInResponse": True}
    if rerank.get("top_n"):
        body["topN"] = rerank["top_n"]
    return body


def vertex_answer(answer: dict[str, Any]) -> dict[str, Any]:
    """Cohere's answer for ``records`` of ``id`` and ``score`` (a zero score is left out)."""
    return _results([(int(record["id"]), _score(record.get("score")))
                     for record in answer.get("records") or []])
