"""The openai plugin's presets: found by the registry, their defaults, their config errors."""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from tests.gateway_harness import GatewayTestCase
from tests.test_chat import MESSAGES
from txgateway.config import ConfigError, load_config, read_config
from txgateway.providers import ApiCall, IRealtimeProvider, ProviderContext
from txgateway.providers.registry import find_plugins

#: Each preset's default base URL, and whether it needs a key.
PRESETS = {
    "groq": ("https://api.groq.com/openai/v1", True),
    "together": ("https://api.together.ai/v1", True),
    "mistral": ("https://api.mistral.ai/v1", True),
    "deepseek": ("https://api.deepseek.com", True),
    "xai": ("https://api.x.ai/v1", True),
    "openrouter": ("https://openrouter.ai/api/v1", True),
    "fireworks": ("https://api.fireworks.ai/inference/v1", True),
    "ollama": ("http://localhost:11434/v1", False),
    "vllm": ("http://localhost:8000/v1", False),
    "lmstudio": ("http://localhost:1234/v1", False),
}


def chat_url(provider: object) -> bytes:
    return provider.build_request(ApiCall("chat", b"{}", {}, "m", False)).url


class PresetDefaultsTests(TestCase):
    def build(self, name: str, **raw: str) -> object:
        plugin = find_plugins()[name]
        settings = load_config(
            f"providers: {{p: {{plugin: {name}, {', '.join(f'{k}: {v}' for k, v in raw.items())}"
            "}}\nmodels: []\n", find_plugins).providers["p"].settings
        return plugin.build("p", settings, ProviderContext(MemoryReactorClock(), object()))

    def test_defaults(self) -> None:
        """Each preset is found, with its base URL filled in and no realtime sessions."""
        for name, (base_url, _) in PRESETS.items():
            provider = self.build(name, api_key="k")
            self.assertEqual(chat_url(provider), (base_url + "/chat/completions").encode())
            self.assertEqual(provider.kind, name)
            self.assertFalse(IRealtimeProvider.providedBy(provider))
        self.assertIn("rerank", self.build("vllm").apis)
        self.assertNotIn("rerank", self.build("ollama").apis)

    def test_base_url_overridden(self) -> None:
        provider = self.build("vllm", base_url="http://gpu-box:9000/v1", rerank_path="/v2/rerank")
        self.assertEqual(chat_url(provider), b"http://gpu-box:9000/v1/chat/completions")
        self.assertEqual(provider.build_request(ApiCall("rerank", b"{}", {}, "m", False)).url,
                         b"http://gpu-box:9000/v1/v2/rerank")

    def test_key_required(self) -> None:
        """A hosted preset without its key fails at load, naming the key; a local one loads."""
        for name, (_, key_required) in PRESETS.items():
            text = f"providers: {{p: {{plugin: {name}}}}}\nmodels: []\n"
            if key_required:
                with self.assertRaises(ConfigError) as caught:
                    load_config(text, find_plugins)
                self.assertEqual(caught.exception.problems, ["providers.p.api_key: required"])
            else:
                load_config(text, find_plugins)

    def test_examples_load(self) -> None:
        """The example configs of the presets and of Cohere load as they are."""
        examples = os.path.join(os.path.dirname(__file__), "..", "twistd-config", "examples")
        environ = {"GROQ_API_KEY": "gsk", "COHERE_API_KEY": "co", "VLLM_BASE_URL": "http://h/v1"}
        groq = read_config(os.path.join(examples, "groq.yaml"), find_plugins, environ)
        self.assertEqual({name: p.plugin for name, p in groq.providers.items()},
                         {"groq": "groq", "vllm": "vllm"})
        cohere = read_config(os.path.join(examples, "cohere.yaml"), find_plugins, environ)
        self.assertEqual(cohere.providers["cohere"].settings.api_key, "co")

    def test_unknown_key(self) -> None:
        """Settings stay strict: OpenRouter's attribution is OpenRouter's alone."""
        with self.assertRaises(ConfigError) as caught:
            load_config("providers: {p: {plugin: groq, api_key: k, app_name: x}}\nmodels: []\n",
                        find_plugins)
        self.assertEqual(caught.exception.problems, ["providers.p.app_name: unknown key"])


PROVIDERS = "\n".join(
    f"  {name}:\n    plugin: {name}\n    base_url: http://127.0.0.1:{{upstream_port}}/v1\n"
    + (f"    api_key: {name}-key\n" if key_required else "")
    for name, (_, key_required) in PRESETS.items())

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
access_log: {access_log}
upstream: {{connect_timeout: 1, first_byte_timeout: 1, idle_timeout: 0.5}}
providers:
""" + PROVIDERS + """
  openrouter-attributed:
    plugin: openrouter
    base_url: http://127.0.0.1:{upstream_port}/v1
    api_key: or-key
    site_url: https://example.org
    app_name: Example
models:
""" + "\n".join(f"  - name: {name}-model\n    provider: {name}" for name in PRESETS) + """
  - name: attributed
    provider: openrouter-attributed
"""


class PresetRequestTests(GatewayTestCase):
    config = CONFIG

    async def test_bearer_key(self) -> None:
        """A call through each preset carries its key as a bearer token, or none."""
        for index, (name, (_, key_required)) in enumerate(PRESETS.items()):
            await self.sdk(self.client.chat.completions.create, model=f"{name}-model",
                           messages=MESSAGES)
            path, headers, _ = self.fake.requests[index]
            self.assertEqual(path, b"/v1/chat/completions")
            self.assertEqual(headers.get(b"Authorization"),
                             [f"Bearer {name}-key".encode()] if key_required else None)
        self.assertEqual([r["provider"] for r in self.access_records()], list(PRESETS))

    async def test_openrouter_attribution(self) -> None:
        """OpenRouter's ``site_url`` and ``app_name`` are sent as its attribution headers."""
        for model in ("attributed", "openrouter-model"):
            await self.sdk(self.client.chat.completions.create, model=model,
                           messages=MESSAGES)
        attributed, plain = (headers for _, headers, _ in self.fake.requests)
        self.assertEqual((attributed[b"Http-Referer"], attributed[b"X-Title"]),
                         ([b"https://example.org"], [b"Example"]))
        self.assertNotIn(b"Http-Referer", plain)
        self.assertNotIn(b"X-Title", plain)
