"""
Cohere's rerank API (v2), as callers speak it: request checks, error bodies, usage.

Rerank servers answer in one shape whoever made them (Cohere, vLLM, Jina, Together: ``results``
of ``index`` and ``relevance_score``), so answers pass through untouched; what differs is where
usage is reported, which `rerank_usage` reads.
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from txgateway.dialects.openai import (
    BadRequest,
    loads_object,
    model_of,
    parse_object,
    required_text,
)
from txgateway.usage import Usage, estimate_tokens


@attrs.frozen
class RerankRequest:
    """A rerank request: the caller's bytes, parsed once."""

    raw: bytes
    parsed: dict[str, Any]
    model: str
    #: Every document as text (``{"text": ...}`` objects flattened).
    documents: tuple[str, ...]
    #: Some documents were ``{"text": ...}`` objects: the upstream gets them as strings.
    flattened: bool
    #: Rerank answers are never streamed.
    stream: bool = False


def parse_rerank(raw: bytes) -> RerankRequest:
    """Check what the gateway routes and bills on; other fields are the upstream's to judge."""
    parsed = parse_object(raw)
    model = model_of(parsed)
    required_text(parsed, "query", "'query' is required and must be a non-empty string", "query")
    documents = parsed.get("documents")
    if not isinstance(documents, list) or not documents:
        raise BadRequest("'documents' is required and must be a non-empty array", "documents")
    texts = []
    for index, document in enumerate(documents):
        if isinstance(document, dict):
            document = document.get("text")
        if not isinstance(document, str):
            raise BadRequest(f"documents[{index}] must be a string or an object with a string "
                             "'text'", "documents")
        texts.append(document)
    for name in ("top_n", "max_tokens_per_doc"):
        value = parsed.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or value < 1):
            raise BadRequest(f"'{name}' must be a positive integer", name)
    returned = parsed.get("return_documents")
    if returned is not None and not isinstance(returned, bool):
        raise BadRequest("'return_documents' must be a boolean", "return_documents")
    return RerankRequest(raw=raw, parsed=parsed, model=model, documents=tuple(texts),
                         flattened=any(isinstance(d, dict) for d in documents))


def upstream_rerank_body(rerank: RerankRequest, upstream_model: str) -> bytes:
    """The caller's own bytes, unless the model name or object documents must change."""
    changes: dict[str, Any] = {}
    if upstream_model != rerank.model:
        changes["model"] = upstream_model
    if rerank.flattened:
        changes["documents"] = rerank.documents
    if not changes:
        return rerank.raw
    return orjson.dumps({**rerank.parsed, **changes})


#: Cohere bills a search unit per query of up to 100 documents (Bedrock bills rerank alike).
DOCUMENTS_PER_SEARCH_UNIT = 100


def completed_answer(answer: dict[str, Any], rerank: RerankRequest) -> dict[str, Any]:
    """
    A translated answer (from a cloud's own ranking API) with what only the request knows:
    each result's document when ``return_documents`` asks, and the search units billed.
    """
    if rerank.parsed.get("return_documents"):
        answer["results"] = [{**result, "document": {"text": rerank.documents[result["index"]]}}
                             for result in answer["results"]]
    searches = -(-len(rerank.documents) // DOCUMENTS_PER_SEARCH_UNIT)
    answer.setdefault("meta", {}).setdefault("billed_units", {"search_units": searches})
    return answer


def error_body(status: int, message: str, code: str | None = None,
               param: str | None = None) -> bytes:
    """Cohere's error object: a ``message``, the status carrying the rest."""
    return orjson.dumps({"message": message})


def is_error_body(body: bytes) -> bool:
    """Whether an upstream's error answer is already in Cohere's shape (a ``message``)."""
    answer = loads_object(body)
    return answer is not None and isinstance(answer.get("message"), str)


def rerank_usage(answer: Any, rerank: RerankRequest) -> Usage:
    """
    The usage a rerank answer reports: Cohere's ``meta`` (billed search units, tokens) or the
    ``usage`` of vLLM, Jina and Together (tokens).  Input tokens are estimated when none are.
    """
    meta = answer.get("meta") if isinstance(answer, dict) else None
    billed = _mapping(meta, "billed_units")
    tokens = _first_count(_mapping(meta, "tokens").get("input_tokens"),
                          billed.get("input_tokens"))
    if tokens is None and isinstance(answer, dict):
        usage = _mapping(answer, "usage")
        tokens = _first_count(usage.get("prompt_tokens"), usage.get("total_tokens"))
    search_units = _first_count(billed.get("search_units")) or 0
    if tokens is None:
        size = len(rerank.parsed["query"]) * len(rerank.documents) + sum(
            len(document) for document in rerank.documents)
        return Usage(input_tokens=estimate_tokens(size), search_units=search_units,
                     estimated=True)
    return Usage(input_tokens=tokens, search_units=search_units)


def _mapping(parent: Any, name: str) -> dict[str, Any]:
    value = parent.get(name) if isinstance(parent, dict) else None
    return value if isinstance(value, dict) else {}


def _first_count(*values: Any) -> int | None:
    """The first whole number among ``values`` (Cohere reports counts as floats)."""
    for value in values:
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return int(value)
    return None
