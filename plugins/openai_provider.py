"""
The ``openai`` provider: OpenAI itself and any server that speaks its API (vLLM, Ollama,
LM Studio, Groq, Together, ...), reached at ``base_url`` with a bearer key.
"""

from __future__ import annotations

from urllib.parse import urlencode

import attrs
from twisted.plugin import IPlugin
from twisted.web.http_headers import Headers
from zope.interface import implementer

from txgateway.config import HttpURL
from txgateway.providers import (
    ApiCall,
    IProvider,
    IProviderPlugin,
    ProviderContext,
    RealtimeTarget,
    UpstreamRequest,
)

#: Paths under ``base_url`` per API family.
PATHS = {"chat": "/chat/completions"}


@attrs.frozen
class OpenAISettings:
    base_url: HttpURL = HttpURL("https://api.openai.com/v1")
    #: Sent as ``Authorization: Bearer``; empty for servers that need none.
    api_key: str = ""
    #: Extra headers sent with every request (``OpenAI-Organization``, a proxy's token, ...).
    headers: dict[str, str] = attrs.field(factory=dict)


@implementer(IProvider)
class OpenAIProvider:
    kind = "openai"
    apis = frozenset(PATHS)

    def __init__(self, name: str, settings: OpenAISettings, context: ProviderContext) -> None:
        self.name = name
        self.agent = context.http_agent
        self._urls = {api: (settings.base_url + path).encode() for api, path in PATHS.items()}
        headers = Headers({b"content-type": [b"application/json"],
                           b"user-agent": [b"txgateway"]})
        if settings.api_key:
            headers.setRawHeaders(b"authorization", [b"Bearer " + settings.api_key.encode()])
        for header, value in settings.headers.items():
            headers.setRawHeaders(header.encode(), [value.encode()])
        # Shared by every request: the agent copies headers before it adds its own.
        self._headers = headers
        self._realtime_url = _websocket_url(settings.base_url) + "/realtime"
        self._realtime_headers = dict(settings.headers)
        if settings.api_key:
            self._realtime_headers["Authorization"] = "Bearer " + settings.api_key

    def build_request(self, call: ApiCall) -> UpstreamRequest:
        return UpstreamRequest(b"POST", self._urls[call.api], self._headers, call.body)

    def realtime_target(self, model: str | None, intent: str,
                        beta: bool) -> RealtimeTarget | None:
        """``<base_url>/realtime`` over ws(s), with this provider's key, never the caller's."""
        query = {"model": model} if model else {}
        if intent != "realtime":
            query["intent"] = intent
        headers = dict(self._realtime_headers)
        if beta:
            headers["OpenAI-Beta"] = "realtime=v1"
        return RealtimeTarget(self._realtime_url + "?" + urlencode(query), headers)


def _websocket_url(base_url: str) -> str:
    """http -> ws, https -> wss, as the openai SDK derives its realtime URL."""
    scheme, rest = base_url.split(":", 1)
    return ("wss" if scheme == "https" else "ws") + ":" + rest


@implementer(IPlugin, IProviderPlugin)
class OpenAIPlugin:
    name = "openai"
    settings_type = OpenAISettings

    def build(self, name: str, settings: OpenAISettings,
              context: ProviderContext) -> OpenAIProvider:
        return OpenAIProvider(name, settings, context)


openai = OpenAIPlugin()
