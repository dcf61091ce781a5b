"""
``POST /v2/rerank`` (also ``/cohere/v2/rerank`` and ``/v1/rerank``): Cohere's rerank API,
proxied to the provider behind the model.

The rerank servers of the cohere and openai plugins answer in Cohere's shape (Cohere itself,
and vLLM-style servers with a ``rerank_path``), so the answer goes back as it came; usage
(search units, tokens) is read on the side.  A provider in another dialect that serves rerank
(Bedrock, Vertex AI) gives its answer through ``translate_response(body,
"rerank")``, completed with the documents and search units only the request knows.  Errors are
Cohere's ``{"message": ...}`` with the HTTP status the Cohere SDK maps.
"""

from __future__ import annotations

from typing import Any

import orjson
from zope.interface import implementer

from txgateway.admission import Refusal
from txgateway.dialects.cohere import (
    RerankRequest,
    completed_answer,
    error_body,
    parse_rerank,
    rerank_usage,
    upstream_rerank_body,
)
from txgateway.dialects.errors import COHERE
from txgateway.providers import OPENAI_WIRE, ApiCall, UpstreamRequest, speaks
from txgateway.routing import Target
from txgateway.usage import Usage
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.runner import CallEndpoint, ICodec


class Rerank(CallEndpoint):
    openapi = Endpoint("Cohere", {"POST": Operation(
        "Rerank documents by relevance to a query", "RerankRequest", "RerankResult")})
    route = "rerank"
    parse = staticmethod(parse_rerank)
    error_body = staticmethod(error_body)
    errors = COHERE

    def codec(self, request: Any, rerank: RerankRequest, target: Target) -> ICodec:
        provider = target.provider
        if "rerank" not in provider.apis:
            raise Refusal(400, f"the model '{rerank.model}' is served by the provider "
                          f"'{provider.name}', which does not offer the rerank API")
        return RerankCodec(provider, rerank)


@implementer(ICodec)
class RerankCodec:
    """
    Cohere's shape both ways for the rerank servers that speak it; a provider of another
    dialect answers through ``translate_response(body, "rerank")``, completed with the
    documents and search units only the request knows.
    """

    stream_type = b""

    def __init__(self, provider: Any, rerank: RerankRequest) -> None:
        self._provider = provider
        self._rerank = rerank
        self._translated = not speaks(provider, OPENAI_WIRE)

    def request(self, rerank: RerankRequest, target: Target) -> UpstreamRequest:
        return self._provider.build_request(ApiCall(
            api="rerank", body=upstream_rerank_body(rerank, target.model),
            parsed=rerank.parsed, model=target.model, stream=False))

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        usage = None
        if self._translated:
            body, usage = self._provider.translate_response(body, "rerank")
        answer = orjson.loads(body)
        if not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
            raise ValueError("the upstream's answer has no rerank results")
        if self._translated:
            answer = completed_answer(answer, self._rerank)
            body = orjson.dumps(answer)
        return body, usage or rerank_usage(answer, self._rerank)

    def error(self, status: int, body: bytes) -> bytes:
        return body

    def transcoder(self, rerank: RerankRequest) -> Any:
        raise NotImplementedError("a rerank is never streamed")
