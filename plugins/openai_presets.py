"""
Presets of the openai plugin for well-known OpenAI-compatible services: ``plugin: groq`` with
just an ``api_key``, the base URL filled in.  Each preset is the openai plugin's provider and
settings with its own defaults (``base_url`` can still be overridden), its own name as the
provider kind, and no realtime sessions.
"""

from __future__ import annotations

import attrs
from zope.interface import classImplementsOnly

from txgateway.config import HttpURL
from txgateway.plugins.openai_provider import OpenAIProvider, OpenAISettings
from txgateway.providers import IPassthroughProvider, ProviderContext, ProviderPlugin


def _preset(name: str, base_url: str, key_required: bool, rerank_path: str = "",
            settings_base: type = OpenAISettings,
            provider_base: type = OpenAIProvider) -> ProviderPlugin:
    """A plugin named ``name``: the openai plugin with these defaults."""
    title = "".join(part.capitalize() for part in name.split("_"))
    fields: dict[str, type] = {"base_url": HttpURL, "rerank_path": str}
    if key_required:
        fields["api_key"] = str
    settings = attrs.frozen(kw_only=True)(type(f"{title}Settings", (settings_base,), {
        "__annotations__": fields, "__module__": __name__,
        "base_url": HttpURL(base_url), "rerank_path": rerank_path}))
    provider = type(f"{title}Provider", (provider_base,), {"kind": name, "__module__": __name__})
    classImplementsOnly(provider, IPassthroughProvider)  # no realtime sessions
    return ProviderPlugin(name, settings, provider)


@attrs.frozen(kw_only=True)
class OpenRouterAttribution(OpenAISettings):
    #: Sent as ``HTTP-Referer`` and ``X-Title``: the app's entry in OpenRouter's rankings.
    site_url: str = ""
    app_name: str = ""


class _OpenRouterProvider(OpenAIProvider):
    def __init__(self, name: str, settings: OpenRouterAttribution,
                 context: ProviderContext) -> None:
        attribution = {"HTTP-Referer": settings.site_url, "X-Title": settings.app_name}
        super().__init__(name, attrs.evolve(settings, headers={**attribution,
                                                               **settings.headers}), context)


groq = _preset("groq", "https://api.groq.com/openai/v1", key_required=True)
together = _preset("together", "https://api.together.ai/v1", key_required=True)
mistral = _preset("mistral", "https://api.mistral.ai/v1", key_required=True)
deepseek = _preset("deepseek", "https://api.deepseek.com", key_required=True)
xai = _preset("xai", "https://api.x.ai/v1", key_required=True)
openrouter = _preset("openrouter", "https://openrouter.ai/api/v1", key_required=True,
                     settings_base=OpenRouterAttribution, provider_base=_OpenRouterProvider)
fireworks = _preset("fireworks", "https://api.fireworks.ai/inference/v1", key_required=True)
ollama = _preset("ollama", "http://localhost:11434/v1", key_required=False)
vllm = _preset("vllm", "http://localhost:8000/v1", key_required=False, rerank_path="/rerank")
lmstudio = _preset("lmstudio", "http://localhost:1234/v1", key_required=False)
