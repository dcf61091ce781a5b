"""
The ``cohere`` provider end to end: the openai and anthropic SDKs through the gateway to the
fake Cohere's OpenAI-compatible chat.
"""

from __future__ import annotations

import anthropic
import openai
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import TestCase

from tests.fake_cohere import CohereTestCase
from tests.fake_openai import CONTENT, TOOL_ARGUMENT_FRAGMENTS, USAGE
from tests.test_chat import MESSAGES, TOOLS, collect_stream
from tests.test_messages import TOOLS as ANTHROPIC_TOOLS
from tests.test_messages import final_message
from txgateway.config import ConfigError, load_config
from txgateway.providers import ApiCall, IRealtimeProvider, ProviderContext
from txgateway.providers.registry import find_plugins

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
access_log: {access_log}
upstream: {{connect_timeout: 1, first_byte_timeout: 1, idle_timeout: 0.5}}
providers:
  cohere:
    plugin: cohere
    base_url: http://127.0.0.1:{cohere_port}
    api_key: co-upstream-key
models:
  - name: "*"
    provider: cohere
"""

#: A 1x1 transparent PNG.
PIXEL = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJ"
         "RU5ErkJggg==")


class CohereChatTests(CohereTestCase):
    config = CONFIG

    async def _start(self) -> None:
        await super()._start()
        self.anthropic = anthropic.Anthropic(base_url=self.base_url, api_key="sk-caller",
                                             max_retries=0, timeout=10)
        self.addCleanup(self.anthropic.close)

    def sent(self, index: int = 0) -> dict:
        """What Cohere got: on its compatibility path, with the provider's key."""
        path, headers, body = self.cohere.requests[index]
        self.assertEqual(path, b"/compatibility/v1/chat/completions")
        self.assertEqual(headers[b"Authorization"], [b"Bearer co-upstream-key"])
        return body

    async def test_completion(self) -> None:
        answer = await self.sdk(self.client.chat.completions.create, model="command-a-03-2025",
                                messages=MESSAGES)
        self.assertEqual(answer.choices[0].message.content, "".join(CONTENT))
        self.assertEqual(answer.usage.prompt_tokens, USAGE["prompt_tokens"])
        self.assertEqual(self.sent(), {"model": "command-a-03-2025", "messages": MESSAGES})
        [record] = self.access_records()
        self.assertEqual((record["provider"], record["input_tokens"], record["usage_estimated"]),
                         ("cohere", USAGE["prompt_tokens"], False))

    async def test_stream(self) -> None:
        """Streams go without ``stream_options``, which Cohere rejects, even the caller's."""
        stream = await self.sdk(self.client.chat.completions.create, model="command-a-03-2025",
                                messages=MESSAGES, stream=True,
                                stream_options={"include_usage": True})
        chunks = await self.sdk(collect_stream, stream)
        self.assertEqual("".join(c.choices[0].delta.content or "" for c in chunks),
                         "".join(CONTENT))
        self.assertNotIn("stream_options", self.sent())
        [record] = self.access_records()
        self.assertEqual((record["status"], record["usage_estimated"]), (200, True))

    async def test_tools_streamed(self) -> None:
        stream = await self.sdk(self.client.chat.completions.create, model="command-a-03-2025",
                                messages=MESSAGES, tools=TOOLS, stream=True)
        chunks = await self.sdk(collect_stream, stream)
        arguments = "".join(call.function.arguments or "" for c in chunks if c.choices
                            for call in c.choices[0].delta.tool_calls or [])
        self.assertEqual(arguments, "".join(TOOL_ARGUMENT_FRAGMENTS))

    async def test_error(self) -> None:
        with self.assertRaises(openai.RateLimitError) as caught:
            await self.sdk(self.client.chat.completions.create, model="error-429",
                           messages=MESSAGES)
        self.assertEqual(caught.exception.response.headers["retry-after"], "7")

    async def test_messages(self) -> None:
        """The anthropic SDK reaches Cohere through the internal chat shape, images too."""
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                             "data": PIXEL}}
        answer = await self.sdk(self.anthropic.messages.create, model="command-a-03-2025",
                                max_tokens=50, messages=[{"role": "user", "content": [
                                    image, {"type": "text", "text": "What is this?"}]}])
        self.assertEqual(answer.content[0].text, "".join(CONTENT))
        self.assertEqual(answer.usage.output_tokens, USAGE["completion_tokens"])
        [part, _] = self.sent()["messages"][0]["content"]
        self.assertEqual(part["image_url"]["url"], "data:image/png;base64," + PIXEL)

    async def test_messages_stream_with_tools(self) -> None:
        events, message = await self.sdk(final_message, self.anthropic,
                                         model="command-a-03-2025", max_tokens=50,
                                         messages=MESSAGES, tools=ANTHROPIC_TOOLS)
        [call] = message.content
        self.assertEqual((call.name, call.input), ("get_weather", {"city": "Paris"}))
        self.assertNotIn("stream_options", self.sent())

    async def test_messages_error(self) -> None:
        with self.assertRaises(anthropic.AuthenticationError):
            await self.sdk(self.anthropic.messages.create, model="error-401", max_tokens=10,
                           messages=MESSAGES)


class CohereProviderTests(TestCase):
    """The plugin's URLs and settings, without a network."""

    def build(self, **settings: str) -> object:
        plugin = find_plugins()["cohere"]
        loaded = plugin.settings_type(**settings)
        return plugin.build("co", loaded, ProviderContext(MemoryReactorClock(), object()))

    def test_urls(self) -> None:
        provider = self.build(api_key="k")
        self.assertEqual(provider.apis, {"chat", "embeddings", "rerank"})
        urls = {api: provider.build_request(ApiCall(api, b"{}", {}, "m", False)).url
                for api in provider.apis}
        self.assertEqual(urls, {
            "chat": b"https://api.cohere.com/compatibility/v1/chat/completions",
            "embeddings": b"https://api.cohere.com/compatibility/v1/embeddings",
            "rerank": b"https://api.cohere.com/v2/rerank"})
        self.assertFalse(IRealtimeProvider.providedBy(provider))

    def test_api_key_required(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_config("providers: {co: {plugin: cohere}}\nmodels: []\n", find_plugins)
        self.assertEqual(caught.exception.problems, ["providers.co.api_key: required"])
