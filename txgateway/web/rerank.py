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

from txgateway.accounting import Exchange
from txgateway.dialects.cohere import (
    RerankRequest,
    completed_answer,
    error_body,
    parse_rerank,
    rerank_usage,
    upstream_rerank_body,
)
from txgateway.dialects.errors import COHERE
from txgateway.providers import OPENAI_WIRE, ApiCall, speaks
from txgateway.routing import Target
from txgateway.upstream import UpstreamCall, UpstreamError
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.proxy import ProxyEndpoint, Refusal, finish


class Rerank(ProxyEndpoint):
    openapi = Endpoint("Cohere", {"POST": Operation(
        "Rerank documents by relevance to a query", "RerankRequest", "RerankResult")})
    route = "rerank"
    parse = staticmethod(parse_rerank)
    error_body = staticmethod(error_body)

    errors = COHERE

    async def proxy(self, request: Any, exchange: Exchange, rerank: RerankRequest,
                    target: Target, call: UpstreamCall) -> None:
        provider = target.provider
        if "rerank" not in provider.apis:
            raise Refusal(400, f"the model '{rerank.model}' is served by the provider "
                          f"'{provider.name}', which does not offer the rerank API")
        upstream_request = provider.build_request(ApiCall(
            api="rerank", body=upstream_rerank_body(rerank, target.model),
            parsed=rerank.parsed, model=target.model, stream=False,
        ))
        response = await call.send(provider.agent, upstream_request)
        exchange.first_byte = self._gateway.reactor.seconds()
        body = await call.read(response)
        if response.code != 200:
            self.answer_error(request, exchange, response, call, body)
            return
        body = self._answer(provider, exchange, rerank, body)
        exchange.status = 200
        finish(request, call, 200, body)

    def _answer(self, provider: Any, exchange: Exchange, rerank: RerankRequest,
                body: bytes) -> bytes:
        """The answer to send back, with its usage counted; unreadable ones are a 502."""
        usage = None
        try:
            translated = not speaks(provider, OPENAI_WIRE)
            if translated:
                body, usage = provider.translate_response(body, "rerank")
            answer = orjson.loads(body)
            if not isinstance(answer, dict) or not isinstance(answer.get("results"), list):
                raise UpstreamError("the upstream's answer has no rerank results")
            if translated:
                answer = completed_answer(answer, rerank)
                body = orjson.dumps(answer)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError):
            raise UpstreamError("the upstream's answer could not be read") from None
        exchange.usage = usage or rerank_usage(answer, rerank)
        return body
