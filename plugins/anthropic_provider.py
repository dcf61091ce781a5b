"""
The ``anthropic`` provider: Anthropic's Messages API (and servers that speak it), reached at
``base_url`` with ``x-api-key`` and ``anthropic-version``.

OpenAI chat calls are translated to Messages and their answers back
(`txgateway.translate.chat_to_messages`); Messages and count_tokens calls from
Anthropic-speaking callers go through as they came.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs
import orjson
from twisted.web.http_headers import Headers
from zope.interface import implementer

from txgateway.config import HttpURL
from txgateway.providers import (
    ApiCall,
    IPassthroughProvider,
    ITranslatingProvider,
    ProviderContext,
    ProviderPlugin,
    UpstreamRequest,
    json_request_headers,
)
from txgateway.translate.chat_to_messages import (
    MessagesToChatStream,
    chat_completion,
    messages_request,
    openai_error,
)
from txgateway.usage import Usage

#: Paths under ``base_url`` per API family.
PATHS = {"chat": "/v1/messages", "messages": "/v1/messages",
         "count_tokens": "/v1/messages/count_tokens"}


@attrs.frozen
class AnthropicSettings:
    #: Without ``/v1``, as the anthropic SDK's ``base_url``.
    base_url: HttpURL = HttpURL("https://api.anthropic.com")
    #: Sent as ``x-api-key``.
    api_key: str = ""
    #: Sent as ``anthropic-version``, unless a Messages caller sends its own.
    version: str = "2023-06-01"
    #: Sent as ``anthropic-beta`` when not empty (a comma-separated list), with the betas a
    #: Messages caller asks for added.
    beta: str = ""
    #: ``max_tokens`` for OpenAI calls that set none: Anthropic requires it.
    default_max_tokens: int = 4096
    #: Extra headers sent with every request.
    headers: dict[str, str] = attrs.field(factory=dict)


@implementer(IPassthroughProvider, ITranslatingProvider)
class AnthropicProvider:
    kind = "anthropic"
    dialect = "anthropic"
    stream_content_type = b"text/event-stream"
    apis = frozenset(PATHS)

    def __init__(self, name: str, settings: AnthropicSettings,
                 context: ProviderContext) -> None:
        self.name = name
        self.agent = context.http_agent
        self._clock = context.reactor
        self._default_max_tokens = settings.default_max_tokens
        self._betas = _betas(settings.beta)
        self._urls = {api: (settings.base_url + path).encode() for api, path in PATHS.items()}
        self._headers = json_request_headers({
            "anthropic-version": settings.version, "x-api-key": settings.api_key,
            "anthropic-beta": settings.beta, **settings.headers})
        #: ``/p/<name>/...`` stands for ``base_url``/..., with these headers.
        self.passthrough_base = settings.base_url
        self.passthrough_headers = {
            "anthropic-version": settings.version, "x-api-key": settings.api_key,
            "anthropic-beta": settings.beta, **settings.headers}

    def build_request(self, call: ApiCall) -> UpstreamRequest:
        body = call.body
        headers = self._headers
        if call.api == "chat":
            body = orjson.dumps(messages_request(call.parsed, call.model,
                                                 self._default_max_tokens))
        elif call.headers:
            headers = self._with_caller(call.headers)
        return UpstreamRequest(b"POST", self._urls[call.api], headers, body)

    def _with_caller(self, caller: Mapping[str, str]) -> Headers:
        """
        The headers for a caller's own Messages request: its body passes through, so its
        ``anthropic-version`` and its betas (with the configured ones) must go along.
        """
        headers = self._headers.copy()
        version = caller.get("anthropic-version")
        if version:
            headers.setRawHeaders(b"anthropic-version", [version.encode("latin-1")])
        betas = _betas(caller.get("anthropic-beta", ""))
        if betas:
            merged = ",".join(dict.fromkeys(self._betas + betas))
            headers.setRawHeaders(b"anthropic-beta", [merged.encode("latin-1")])
        return headers

    def translate_response(self, body: bytes, api: str = "chat") -> tuple[bytes, Usage | None]:
        completion, usage = chat_completion(orjson.loads(body), int(self._clock.seconds()))
        return orjson.dumps(completion), usage

    def translate_error(self, status: int, body: bytes) -> bytes | None:
        return openai_error(status, body)

    def stream_translator(self, wants_usage: bool) -> Any:
        return MessagesToChatStream(int(self._clock.seconds()), wants_usage)


def _betas(listed: str) -> list[str]:
    """The names in a comma-separated ``anthropic-beta`` value, in order."""
    return [name for name in (part.strip() for part in listed.split(",")) if name]


anthropic = ProviderPlugin("anthropic", AnthropicSettings, AnthropicProvider)
