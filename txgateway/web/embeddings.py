"""
``POST /v1/embeddings``: single and batch inputs, float or base64 vectors, ``dimensions``.

An OpenAI-compatible upstream gets the caller's body as it came (the model aside) and its
answer comes back untouched, base64 vectors included.  A translating provider is given the
parsed request and answers with float vectors in OpenAI's shape; when the caller asked for
base64 (the openai SDK's default) the endpoint encodes them itself, as OpenAI does.
"""

from __future__ import annotations

from typing import Any

import orjson

from txgateway.accounting import Exchange
from txgateway.dialects.openai_rest import (
    RestRequest,
    encode_embeddings_base64,
    parse_embeddings,
    usage_of,
)
from txgateway.providers import OPENAI_WIRE, ApiCall, speaks
from txgateway.routing import Target
from txgateway.upstream import UpstreamCall, UpstreamError
from txgateway.usage import Usage, estimate_tokens
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.rest import RestEndpoint, usage_reader

_read_usage = usage_reader(usage_of)


class Embeddings(RestEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Create embeddings", "EmbeddingRequest", "EmbeddingList")})
    route = "embeddings"
    api = "embeddings"
    parse = staticmethod(parse_embeddings)

    async def proxy(self, request: Any, exchange: Exchange, embeddings: RestRequest,
                    target: Target, call: UpstreamCall) -> None:
        if self.refused_api(request, exchange, call, target, translated=True):
            return
        provider = target.provider
        translating = not speaks(provider, OPENAI_WIRE)
        upstream_request = provider.build_request(ApiCall(
            api="embeddings",
            body=embeddings.raw if translating else embeddings.upstream_body(target.model),
            parsed=embeddings.parsed, model=target.model, stream=False))
        response = await call.send(provider.agent, upstream_request)
        exchange.first_byte = self._gateway.reactor.seconds()
        body = await call.read(response)
        if translating:
            body = _translated(provider, exchange, response.code, body,
                               embeddings.parsed.get("encoding_format") == "base64")
            if response.code == 200 and exchange.usage is None:
                # Gemini, say, reports no usage for embeddings: the input, estimated.
                exchange.usage = Usage(input_tokens=estimate_tokens(len(embeddings.raw)),
                                       estimated=True)
        self.answer(request, exchange, response, call, body, _read_usage)


def _translated(provider: Any, exchange: Exchange, status: int, body: bytes,
                base64: bool) -> bytes:
    """A translating provider's answer in OpenAI's shape, its vectors encoded if asked."""
    if status != 200:
        return provider.translate_error(status, body) or body
    try:
        body, exchange.usage = provider.translate_response(body, "embeddings")
        if base64:
            body = orjson.dumps(encode_embeddings_base64(orjson.loads(body)))
    except (ValueError, TypeError, AttributeError, KeyError):
        raise UpstreamError("the upstream's answer could not be read") from None
    return body
