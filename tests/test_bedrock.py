"""
End to end: the openai and anthropic SDKs, the gateway and a fake Bedrock runtime that checks
SigV4 signatures, over loopback.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any
from urllib.parse import unquote

import anthropic
import openai
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase

from tests.fake_bedrock import (
    ACCESS_KEY,
    SECRET_KEY,
    SESSION_TOKEN,
    TEXT,
    TITAN_VECTOR,
    TOOL_INPUT_FRAGMENTS,
    USAGE,
    start_fake_bedrock,
)
from tests.gateway_harness import CONFIG, GatewayTestCase
from tests.test_chat import MESSAGES, TOOLS, collect_stream
from tests.test_messages import final_message
from txgateway.config import ConfigError, load_config, read_config
from txgateway.providers.registry import find_plugins

#: OpenAI's prompt_tokens counts cache reads and writes; Converse's inputTokens does not.
PROMPT_TOKENS = (USAGE["inputTokens"] + USAGE["cacheReadInputTokens"]
                 + USAGE["cacheWriteInputTokens"])
PNG = "data:image/png;base64,iVBORw0KGgo="
PROFILE_ARN = ("arn:aws:bedrock:us-west-2:123456789012:inference-profile/"
               "us.anthropic.claude-x-v1:0")
RERANK_ARN = "arn:aws:bedrock:us-west-2::foundation-model/cohere.rerank-v3-5:0"
#: The chain provider finds its keys in this profile of a shared credentials file.
CHAIN_KEY, CHAIN_SECRET = "AKIDCHAINPROFILE", "chain/secret"

PROVIDERS = f"""providers:
  bedrock:
    plugin: bedrock
    region: us-west-2
    base_url: http://127.0.0.1:{{bedrock_port}}
    agent_runtime_url: http://127.0.0.1:{{bedrock_port}}
    access_key_id: {ACCESS_KEY}
    secret_access_key: {SECRET_KEY}
    session_token: {SESSION_TOKEN}
    headers:
      x-amzn-bedrock-trace: ENABLED
  bedrock-wrong-key:
    plugin: bedrock
    region: us-west-2
    base_url: http://127.0.0.1:{{bedrock_port}}
    agent_runtime_url: http://127.0.0.1:{{bedrock_port}}
    access_key_id: {ACCESS_KEY}
    secret_access_key: not-the-secret
  bedrock-chain:
    plugin: bedrock
    region: us-west-2
    base_url: http://127.0.0.1:{{bedrock_port}}
    profile: tester
"""
MODELS = f"""models:
  - name: "anthropic.*"
    provider: bedrock
  - name: "fake.*"
    provider: bedrock
  - name: "amazon.titan-*"
    provider: bedrock
  - name: "cohere.embed-*"
    provider: bedrock
  - name: "amazon.rerank-*"
    provider: bedrock
  - name: "cohere.rerank-*"
    provider: bedrock
  - name: rerank-arn
    provider: bedrock
    model: "{RERANK_ARN}"
  - name: profile
    provider: bedrock
    model: "{PROFILE_ARN}"
  - name: wrong-key
    provider: bedrock-wrong-key
    model: anthropic.claude-x
  - name: from-chain
    provider: bedrock-chain
    model: anthropic.claude-x
"""
BEDROCK_CONFIG = CONFIG.replace("providers:\n", PROVIDERS, 1).replace("models:\n", MODELS, 1)


class BedrockTestCase(GatewayTestCase):
    """The harness's gateway with Bedrock providers, a fake Bedrock, and both SDKs."""

    async def _start(self) -> None:
        self._credentials_chain_environment()
        self.bedrock, self.bedrock_port, self.bedrock_site = await start_fake_bedrock(
            {ACCESS_KEY: SECRET_KEY, CHAIN_KEY: CHAIN_SECRET})
        self.addCleanup(self.bedrock_site.close_connections)
        self.addCleanup(self.bedrock_port.stopListening)
        self.config = BEDROCK_CONFIG.replace("{bedrock_port}",
                                             str(self.bedrock_port.getHost().port))
        await super()._start()
        self.anthropic = anthropic.Anthropic(base_url=self.base_url, api_key="sk-caller",
                                             max_retries=0, timeout=10)
        self.addCleanup(self.anthropic.close)

    def _credentials_chain_environment(self) -> None:
        """Only a shared credentials file for botocore's chain: no real AWS is looked at."""
        directory = tempfile.mkdtemp()
        credentials = os.path.join(directory, "credentials")
        with open(credentials, "w") as file:
            file.write(f"[tester]\naws_access_key_id = {CHAIN_KEY}\n"
                       f"aws_secret_access_key = {CHAIN_SECRET}\n")
        environment = {"AWS_SHARED_CREDENTIALS_FILE": credentials,
                       "AWS_CONFIG_FILE": os.path.join(directory, "config"),
                       "AWS_EC2_METADATA_DISABLED": "true"}
        hidden = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                  "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                  "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_WEB_IDENTITY_TOKEN_FILE")
        saved = {name: os.environ.get(name) for name in (*environment, *hidden)}

        def restore() -> None:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

        self.addCleanup(restore)
        for name in hidden:
            os.environ.pop(name, None)
        os.environ.update(environment)

    async def only_record(self) -> dict[str, Any]:
        """
        The access log's one record, once written: a stream the SDK gave up on at an error
        event is logged when the upstream's last piece arrives, a moment later.
        """
        for _ in range(200):
            records = self.access_records()
            if records:
                [record] = records
                return record
            await deferLater(reactor, 0.01)
        self.fail("no access log record")

    def sent(self, index: int = 0) -> tuple[str, dict[bytes, list[bytes]], Any]:
        """A request the fake received: (unquoted path, headers, body)."""
        path, headers, body = self.bedrock.requests[index]
        return unquote(path.decode()), headers, body


class OpenAIToBedrockTests(BedrockTestCase):
    async def test_completion(self) -> None:
        """A signed Converse call; usage with the cache in prompt_tokens, as OpenAI counts."""
        answer = await self.sdk(self.client.chat.completions.create,
                                model="anthropic.claude-x-v1:0",
                                messages=[{"role": "system", "content": "Be brief."},
                                          *MESSAGES], max_tokens=77, temperature=0.5)
        self.assertEqual(answer.choices[0].message.content, "".join(TEXT))
        self.assertEqual(answer.choices[0].finish_reason, "stop")
        self.assertEqual((answer.usage.prompt_tokens, answer.usage.completion_tokens,
                          answer.usage.total_tokens), (PROMPT_TOKENS, 9, PROMPT_TOKENS + 9))
        self.assertEqual(answer.usage.prompt_tokens_details.cached_tokens, 7)
        path, headers, body = self.sent()
        self.assertEqual(path, "/model/anthropic.claude-x-v1:0/converse")
        self.assertEqual(self.bedrock.requests[0][0],
                         b"/model/anthropic.claude-x-v1%3A0/converse")
        self.assertEqual(headers[b"X-Amz-Security-Token"], [SESSION_TOKEN.encode()])
        self.assertIn(b"x-amzn-bedrock-trace", headers[b"Authorization"][0])
        self.assertEqual(body, {
            "system": [{"text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"text": "Say hello"}]}],
            "inferenceConfig": {"maxTokens": 77, "temperature": 0.5}})
        [record] = self.access_records()
        self.assertEqual(
            {k: record[k] for k in ("route", "provider", "status", "input_tokens",
                                    "output_tokens", "cached_input_tokens",
                                    "cache_creation_input_tokens")},
            {"route": "chat", "provider": "bedrock", "status": 200,
             "input_tokens": PROMPT_TOKENS, "output_tokens": 9, "cached_input_tokens": 7,
             "cache_creation_input_tokens": 5})

    async def test_inference_profile_arn(self) -> None:
        """An ARN is one quoted path segment, and the signature over it still holds."""
        answer = await self.sdk(self.client.chat.completions.create, model="profile",
                                messages=MESSAGES)
        self.assertEqual(answer.choices[0].message.content, "".join(TEXT))
        self.assertEqual(self.sent()[0], f"/model/{PROFILE_ARN}/converse")
        self.assertIn(b"%2F", self.bedrock.requests[0][0])

    async def test_stream(self) -> None:
        """ConverseStream's frames, cut anywhere by the fake, come back as chunks."""
        stream = await self.sdk(self.client.chat.completions.create,
                                model="anthropic.claude-x", messages=MESSAGES, stream=True,
                                stream_options={"include_usage": True})
        chunks = await self.sdk(collect_stream, stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, "".join(TEXT))
        self.assertEqual(chunks[-2].choices[0].finish_reason, "stop")
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual((chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens),
                         (PROMPT_TOKENS, 9))
        self.assertEqual(self.sent()[0], "/model/anthropic.claude-x/converse-stream")
        record = await self.only_record()
        self.assertEqual((record["status"], record["input_tokens"], record["output_tokens"]),
                         (200, PROMPT_TOKENS, 9))
        self.assertFalse(record["usage_estimated"])

    async def test_tools(self) -> None:
        answer = await self.sdk(self.client.chat.completions.create, model="anthropic.claude-x",
                                messages=MESSAGES, tools=TOOLS, tool_choice="required")
        choice = answer.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        [call] = choice.message.tool_calls
        self.assertEqual((call.id, call.function.name),
                         ("tooluse_fake_get_weather", "get_weather"))
        self.assertEqual(json.loads(call.function.arguments), {"city": "Paris"})
        self.assertEqual(self.sent()[2]["toolConfig"], {
            "tools": [{"toolSpec": {"name": "get_weather", "description": "Weather in a city",
                                    "inputSchema": {"json": TOOLS[0]["function"]["parameters"]}}}],
            "toolChoice": {"any": {}}})

    async def test_tools_streamed(self) -> None:
        """Streamed argument fragments reassemble; each call keeps its index and id."""
        tools = [*TOOLS, {"type": "function", "function": {"name": "get_time",
                                                            "parameters": {"type": "object"}}}]
        stream = await self.sdk(self.client.chat.completions.create, model="anthropic.claude-x",
                                messages=MESSAGES, tools=tools, stream=True)
        chunks = await self.sdk(collect_stream, stream)
        calls: dict[int, dict[str, str]] = {}
        for chunk in chunks:
            for call in chunk.choices[0].delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                entry["id"] += call.id or ""
                entry["name"] += (call.function.name or "") if call.function else ""
                entry["arguments"] += (call.function.arguments or "") if call.function else ""
        self.assertEqual(calls, {
            0: {"id": "tooluse_fake_get_weather", "name": "get_weather",
                "arguments": "".join(TOOL_INPUT_FRAGMENTS)},
            1: {"id": "tooluse_fake_get_time", "name": "get_time",
                "arguments": "".join(TOOL_INPUT_FRAGMENTS)}})
        self.assertEqual(chunks[-1].choices[0].finish_reason, "tool_calls")

    async def test_image(self) -> None:
        await self.sdk(self.client.chat.completions.create, model="anthropic.claude-x",
                       messages=[{"role": "user", "content": [
                           {"type": "text", "text": "What is it?"},
                           {"type": "image_url", "image_url": {"url": PNG}}]}])
        self.assertEqual(self.sent()[2]["messages"][0]["content"][1], {
            "image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})

    async def test_image_url_refused(self) -> None:
        """Converse takes no image URLs: a clear 400, and nothing is sent."""
        with self.assertRaises(openai.BadRequestError) as raised:
            await self.sdk(self.client.chat.completions.create, model="anthropic.claude-x",
                           messages=[{"role": "user", "content": [{
                               "type": "image_url",
                               "image_url": {"url": "https://example.com/cat.png"}}]}])
        self.assertIn("data URLs", raised.exception.message)
        self.assertEqual(self.bedrock.requests, [])

    async def test_errors(self) -> None:
        for status, error_class in [(400, openai.BadRequestError),
                                    (403, openai.PermissionDeniedError),
                                    (404, openai.NotFoundError),
                                    (429, openai.RateLimitError),
                                    (503, openai.InternalServerError)]:
            with self.assertRaises(error_class) as raised:
                await self.sdk(self.client.chat.completions.create,
                               model=f"fake.error-{status}", messages=MESSAGES)
            self.assertEqual(raised.exception.status_code, status)
            self.assertIn(f"fake bedrock error {status}", raised.exception.message)
            if status == 429:
                self.assertEqual(raised.exception.response.headers["retry-after"], "7")

    async def test_bad_signature(self) -> None:
        """The fake really checks signatures: a wrong secret is Bedrock's 403."""
        with self.assertRaises(openai.PermissionDeniedError) as raised:
            await self.sdk(self.client.chat.completions.create, model="wrong-key",
                           messages=MESSAGES)
        self.assertIn("signature we calculated does not match", raised.exception.message)

    async def test_credentials_chain(self) -> None:
        """No keys in the config: botocore's chain finds the profile's, off the reactor."""
        answer = await self.sdk(self.client.chat.completions.create, model="from-chain",
                                messages=MESSAGES)
        self.assertEqual(answer.choices[0].message.content, "".join(TEXT))
        authorization = self.sent()[1][b"Authorization"][0]
        self.assertIn(f"Credential={CHAIN_KEY}/".encode(), authorization)

    async def test_stream_exception(self) -> None:
        """An exception frame mid-stream ends the stream with an error the SDK raises."""
        stream = await self.sdk(self.client.chat.completions.create,
                                model="fake.stream-exception", messages=MESSAGES, stream=True)
        with self.assertRaises(openai.APIError) as raised:
            await self.sdk(collect_stream, stream)
        self.assertIn("The model stream failed", raised.exception.message)
        record = await self.only_record()
        self.assertEqual((record["status"], record["usage_estimated"]), (424, True))

    async def test_corrupt_stream(self) -> None:
        stream = await self.sdk(self.client.chat.completions.create,
                                model="fake.corrupt-stream", messages=MESSAGES, stream=True)
        with self.assertRaises(openai.APIError) as raised:
            await self.sdk(collect_stream, stream)
        self.assertIn("corrupt", raised.exception.message)


class AnthropicToBedrockTests(BedrockTestCase):
    """Messages callers: Messages -> OpenAI chat -> Converse, and back."""

    async def test_message(self) -> None:
        answer = await self.sdk(self.anthropic.messages.create, model="anthropic.claude-x",
                                max_tokens=64, messages=MESSAGES)
        self.assertEqual(answer.content[0].text, "".join(TEXT))
        self.assertEqual(answer.stop_reason, "end_turn")
        self.assertEqual((answer.usage.output_tokens, answer.usage.cache_read_input_tokens),
                         (9, 7))
        self.assertEqual(self.sent()[2]["inferenceConfig"], {"maxTokens": 64})

    async def test_stream_with_tools(self) -> None:
        events, message = await self.sdk(
            final_message, self.anthropic, model="anthropic.claude-x", max_tokens=64,
            messages=MESSAGES, tools=[{"name": "get_weather", "description": "Weather",
                                       "input_schema": TOOLS[0]["function"]["parameters"]}])
        self.assertEqual(message.content[0].text, "".join(TEXT))
        self.assertEqual((message.content[1].name, message.content[1].input),
                         ("get_weather", {"city": "Paris"}))
        self.assertEqual(message.stop_reason, "tool_use")
        self.assertEqual(message.usage.output_tokens, 9)

    async def test_error(self) -> None:
        with self.assertRaises(anthropic.RateLimitError) as raised:
            await self.sdk(self.anthropic.messages.create, model="fake.error-429",
                           max_tokens=64, messages=MESSAGES)
        self.assertIn("fake bedrock error 429", str(raised.exception))


class EmbeddingsTests(BedrockTestCase):
    async def test_titan(self) -> None:
        answer = await self.sdk(self.client.embeddings.create,
                                model="amazon.titan-embed-text-v2:0", input="hello world",
                                dimensions=2, encoding_format="float")
        self.assertEqual(answer.data[0].embedding, TITAN_VECTOR[:2])
        self.assertEqual(answer.usage.prompt_tokens, 2)
        self.assertEqual(self.sent()[0], "/model/amazon.titan-embed-text-v2:0/invoke")
        self.assertEqual(self.sent()[2], {"inputText": "hello world", "dimensions": 2})

    async def test_cohere(self) -> None:
        answer = await self.sdk(self.client.embeddings.create, model="cohere.embed-english-v3",
                                input=["a", "b"], encoding_format="float")
        self.assertEqual([d.embedding for d in answer.data], [[0.0, 0.5], [1.0, 0.5]])

    async def test_titan_list_refused(self) -> None:
        with self.assertRaises(openai.BadRequestError) as raised:
            await self.sdk(self.client.embeddings.create,
                           model="amazon.titan-embed-text-v2:0", input=["a", "b"])
        self.assertIn("one input", raised.exception.message)


class ExampleConfigTests(SynchronousTestCase):
    def test_example_loads(self) -> None:
        examples = os.path.join(os.path.dirname(__file__), "..", "twistd-config", "examples")
        config = read_config(os.path.join(examples, "bedrock.yaml"), find_plugins,
                             {"AWS_REGION": "eu-west-3"})
        settings = config.providers["bedrock"].settings
        self.assertEqual((settings.region, settings.base_url, settings.access_key_id),
                         ("eu-west-3", None, ""))
        with self.assertRaises(ConfigError) as raised:
            load_config("providers:\n  b:\n    plugin: bedrock\nmodels: []\n", find_plugins)
        self.assertIn("providers.b.region: required", raised.exception.problems)
