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

from txgateway.dialects.openai_rest import RestRequest, encode_embeddings_base64, parse_embeddings
from txgateway.providers import OPENAI_WIRE, ApiCall, UpstreamRequest, speaks
from txgateway.routing import Target
from txgateway.usage import Usage, estimate_tokens
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.rest import SameRest, read_openai_usage
from txgateway.web.runner import CallEndpoint, ICodec, refused_api


class Embeddings(CallEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Create embeddings", "EmbeddingRequest", "EmbeddingList")})
    route = "embeddings"
    parse = staticmethod(parse_embeddings)

    def codec(self, request: Any, embeddings: RestRequest, target: Target) -> ICodec:
        provider = target.provider
        if "embeddings" not in provider.apis:
            raise refused_api("embeddings", embeddings.model, target)
        if speaks(provider, OPENAI_WIRE):
            return _SAME
        return TranslatedEmbeddings(provider, embeddings)


_SAME = SameRest("embeddings", read_openai_usage)


class TranslatedEmbeddings(SameRest):
    """
    A translating provider's codec: the parsed request, float vectors in OpenAI's shape
    back, encoded when the caller asked for base64 (the openai SDK's default).
    """

    def __init__(self, provider: Any, embeddings: RestRequest) -> None:
        super().__init__("embeddings", read_openai_usage)
        self._provider = provider
        self._embeddings = embeddings

    def request(self, embeddings: RestRequest, target: Target) -> UpstreamRequest:
        return self._provider.build_request(ApiCall(
            api=self.api, body=embeddings.raw, parsed=embeddings.parsed,
            model=target.model, stream=False))

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        embeddings = self._embeddings
        body, usage = self._provider.translate_response(body, "embeddings")
        if embeddings.parsed.get("encoding_format") == "base64":
            body = orjson.dumps(encode_embeddings_base64(orjson.loads(body)))
        if usage is None:
            # Gemini, say, reports no usage for embeddings: the input, estimated.
            usage = Usage(input_tokens=estimate_tokens(len(embeddings.raw)), estimated=True)
        return body, usage

    def error(self, status: int, body: bytes) -> bytes:
        return self._provider.translate_error(status, body) or body
