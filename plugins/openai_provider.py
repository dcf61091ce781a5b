"""
The ``openai`` provider: OpenAI itself and any server that speaks its API (vLLM, Ollama,
LM Studio, Groq, Together, ...), reached at ``base_url`` with a bearer key.
"""

from __future__ import annotations

import attrs
from zope.interface import implementer

from txgateway.config import HttpURL
from txgateway.dialects.openai_rest import OPENAI_PATHS as PATHS
from txgateway.providers import (
    ApiCall,
    IPassthroughProvider,
    IRealtimeProvider,
    ProviderContext,
    ProviderPlugin,
    RealtimeTarget,
    UpstreamRequest,
    json_request_headers,
)
from txgateway.providers.openai_realtime import openai_realtime_target, websocket_url


@attrs.frozen
class OpenAISettings:
    base_url: HttpURL = HttpURL("https://api.openai.com/v1")
    #: Sent as ``Authorization: Bearer``; empty for servers that need none.
    api_key: str = ""
    #: Extra headers sent with every request (``OpenAI-Organization``, a proxy's token, ...).
    headers: dict[str, str] = attrs.field(factory=dict)
    #: Where a server that implements Cohere's rerank serves it, under ``base_url``: vLLM
    #: serves ``/v1/rerank``, so ``/rerank`` with a base URL ending in ``/v1``.  Empty: the
    #: server does no rerank (OpenAI's does not).
    rerank_path: str = ""


@implementer(IPassthroughProvider, IRealtimeProvider)
class OpenAIProvider:
    kind = "openai"
    apis = frozenset(PATHS)

    def __init__(self, name: str, settings: OpenAISettings, context: ProviderContext) -> None:
        self.name = name
        self.agent = context.http_agent
        self._urls = {api: (settings.base_url + path).encode()
                      for api, path in self.paths(settings).items()}
        self.apis = frozenset(self._urls)
        auth = {"Authorization": "Bearer " + settings.api_key} if settings.api_key else {}
        self._realtime_headers = {**settings.headers, **auth}
        self._headers = json_request_headers(self._realtime_headers)
        self._realtime_url = websocket_url(settings.base_url) + "/realtime"
        #: ``/p/<name>/...`` stands for ``base_url``/..., with these headers.
        self.passthrough_base = settings.base_url
        self.passthrough_headers = self._realtime_headers

    def paths(self, settings: OpenAISettings) -> dict[str, str]:
        """The path under ``base_url`` of each API family this server serves."""
        if not settings.rerank_path:
            return PATHS
        return {**PATHS, "rerank": "/" + settings.rerank_path.lstrip("/")}

    def build_request(self, call: ApiCall) -> UpstreamRequest:
        return UpstreamRequest(b"POST", self._urls[call.api], self._headers, call.body)

    def realtime_target(self, model: str | None, intent: str,
                        beta: bool) -> RealtimeTarget | None:
        """``<base_url>/realtime`` over ws(s), with this provider's key, never the caller's."""
        query = {"model": model} if model else {}
        return openai_realtime_target(self._realtime_url, query, intent, beta,
                                      self._realtime_headers)


openai = ProviderPlugin("openai", OpenAISettings, OpenAIProvider)
