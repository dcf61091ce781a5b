"""
The ``cohere`` provider: Cohere's chat and embeddings through its OpenAI-compatible API
(``/compatibility/v1``), and its rerank natively (``/v2/rerank``).

The compatibility API speaks OpenAI's wire format, so this is the openai plugin's provider
with Cohere's paths: calls take the same-dialect fast path.  One difference: the
compatibility API rejects ``stream_options``, which the gateway adds to every stream to count
it, so streams go without it (and their usage is estimated when Cohere reports none).
"""

from __future__ import annotations

import attrs
import orjson
from zope.interface import implementer_only

from txgateway.config import HttpURL
from txgateway.plugins.openai_provider import OpenAIProvider, OpenAISettings
from txgateway.providers import ApiCall, IPassthroughProvider, ProviderPlugin, UpstreamRequest

#: Paths under ``base_url`` per API family (rerank's is the ``rerank_path`` setting).
COMPATIBILITY_PATHS = {
    "chat": "/compatibility/v1/chat/completions",
    "embeddings": "/compatibility/v1/embeddings",
}


@attrs.frozen(kw_only=True)
class CohereSettings(OpenAISettings):
    base_url: HttpURL = HttpURL("https://api.cohere.com")
    #: Sent as ``Authorization: Bearer``.
    api_key: str
    rerank_path: str = "/v2/rerank"


@implementer_only(IPassthroughProvider)  # Cohere has no realtime API
class CohereProvider(OpenAIProvider):
    kind = "cohere"

    def paths(self, settings: OpenAISettings) -> dict[str, str]:
        return {**COMPATIBILITY_PATHS, "rerank": "/" + settings.rerank_path.lstrip("/")}

    def build_request(self, call: ApiCall) -> UpstreamRequest:
        request = super().build_request(call)
        # The gateway asks every stream for its usage; the caller may have asked too.
        if call.api == "chat" and (call.stream or "stream_options" in call.parsed):
            body = {**call.parsed, "model": call.model}
            body.pop("stream_options", None)
            request = attrs.evolve(request, body=orjson.dumps(body))
        return request


cohere = ProviderPlugin("cohere", CohereSettings, CohereProvider)
