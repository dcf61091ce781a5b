"""
The ``gemini`` provider: Google AI Studio's Gemini API at ``base_url``, with ``x-goog-api-key``.

OpenAI chat and embeddings calls are translated to ``generateContent`` /
``streamGenerateContent`` and ``embedContent`` / ``batchEmbedContents``, and the answers back
(`txgateway.plugins.gemini.wire`); OpenAI Realtime sessions to Gemini Live's
``BidiGenerateContent`` WebSocket (`txgateway.plugins.gemini.live`).
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
from zope.interface import implementer

from txgateway.config import HttpURL
from txgateway.plugins.gemini import wire as gemini
from txgateway.plugins.gemini.live import GeminiLive
from txgateway.providers import (
    ApiCall,
    IRealtimeProvider,
    ITranslatingProvider,
    ProviderContext,
    ProviderPlugin,
    RealtimeTarget,
    UpstreamRequest,
    json_request_headers,
)
from txgateway.providers.openai_realtime import websocket_url
from txgateway.realtime.translated import IRealtimeTranslator
from txgateway.usage import Usage


@attrs.frozen
class GeminiSettings:
    base_url: HttpURL = HttpURL("https://generativelanguage.googleapis.com")
    #: Sent as ``x-goog-api-key``.
    api_key: str = ""
    api_version: str = "v1beta"
    #: Extra headers sent with every request.
    headers: dict[str, str] = attrs.field(factory=dict)


@implementer(ITranslatingProvider, IRealtimeProvider, IRealtimeTranslator)
class GeminiProvider:
    kind = "gemini"
    dialect = "gemini"
    stream_content_type = b"text/event-stream"
    apis = frozenset(("chat", "embeddings"))

    def __init__(self, name: str, settings: GeminiSettings, context: ProviderContext) -> None:
        self.name = name
        self.agent = context.http_agent
        self._clock = context.reactor
        self._models_url = f"{settings.base_url}/{settings.api_version}/models/"
        self._headers = json_request_headers({"x-goog-api-key": settings.api_key,
                                              **settings.headers})
        self._live_url = (f"{websocket_url(settings.base_url)}/ws/google.ai.generativelanguage."
                          f"{settings.api_version}.GenerativeService.BidiGenerateContent")
        self._live_headers = {"x-goog-api-key": settings.api_key, **settings.headers}

    def realtime_target(self, model: str | None, intent: str,
                        beta: bool) -> RealtimeTarget | None:
        """Gemini Live, for GA realtime conversations with a named model."""
        if model is None or intent != "realtime" or beta:
            return None
        return RealtimeTarget(self._live_url, self._live_headers)

    def realtime_translation(self, model: str, intent: str) -> GeminiLive | None:
        return GeminiLive(model) if intent == "realtime" else None

    def build_request(self, call: ApiCall) -> UpstreamRequest:
        model = call.model.removeprefix("models/")
        if call.api == "embeddings":
            method, body = gemini.embed_request(call.parsed, model)
        else:
            method = gemini.generate_method(call.stream)
            body = gemini.generate_request(call.parsed)
        return UpstreamRequest(b"POST", f"{self._models_url}{model}:{method}".encode(),
                               self._headers, orjson.dumps(body))

    def translate_response(self, body: bytes, api: str = "chat") -> tuple[bytes, Usage | None]:
        answer = orjson.loads(body)
        if api == "embeddings":
            translated, usage = gemini.embeddings(answer, "")
        else:
            translated, usage = gemini.chat_completion(answer, int(self._clock.seconds()))
        return orjson.dumps(translated), usage

    def translate_error(self, status: int, body: bytes) -> bytes | None:
        return gemini.openai_error(status, body)

    def stream_translator(self, wants_usage: bool) -> Any:
        return gemini.GeminiToChatStream(int(self._clock.seconds()), wants_usage)


gemini_plugin = ProviderPlugin("gemini", GeminiSettings, GeminiProvider)
