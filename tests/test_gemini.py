"""
End to end: the openai and anthropic SDKs, the gateway and a fake Gemini API (Google AI
Studio), over loopback.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic
import openai

from tests.fake_gemini import API_KEY, TEXT, THOUGHT, THOUGHTS_TOKENS, USAGE, start_fake_google
from tests.gateway_harness import CONFIG
from tests.test_chat import MESSAGES, TOOLS, collect_stream
from tests.test_messages import TOOLS as MESSAGES_TOOLS
from tests.test_messages import MessagesTestCase, final_message

GOOGLE_PROVIDERS = f"""
  gem:
    plugin: gemini
    base_url: http://127.0.0.1:{{google_port}}
    api_key: {API_KEY}
  gem-badkey:
    plugin: gemini
    base_url: http://127.0.0.1:{{google_port}}
    api_key: not-the-key
"""
GOOGLE_MODELS = """
  - name: "gemini-*"
    provider: gem
  - name: badkey
    provider: gem-badkey
    model: gemini-x
"""
IMAGE = "data:image/png;base64,iVBORw0KGgo="


def google_config(providers: str, models: str) -> str:
    """The harness's config with Google providers and routes (first, before its ``*``)."""
    config = CONFIG.replace("providers:\n", "providers:\n" + providers, 1)
    return config.replace("models:\n", "models:\n" + models, 1)


class GoogleTestCase(MessagesTestCase):
    """The harness with a fake Google server too."""

    config = google_config(GOOGLE_PROVIDERS, GOOGLE_MODELS)
    public_key: Any = None

    async def _start(self) -> None:
        self.google, self.google_port, self.google_site = await start_fake_google(
            self.public_key)
        self.config = self.config.replace("{google_port}", str(self.google_port.getHost().port))
        self.addCleanup(self._stop_google)
        await super()._start()

    async def _stop_google(self) -> None:
        await self.google_port.stopListening()
        await self.google_site.close_connections()

    def last_request(self) -> tuple[bytes, dict[bytes, list[bytes]], Any]:
        return self.google.requests[-1]


class GeminiChatTests(GoogleTestCase):
    async def test_completion(self) -> None:
        answer = await self.sdk(self.client.chat.completions.create, model="gemini-x",
                                messages=[{"role": "system", "content": "Be brief."},
                                          *MESSAGES], max_tokens=50, temperature=0.5)
        self.assertEqual(answer.choices[0].message.content, "".join(TEXT))
        self.assertEqual(answer.choices[0].finish_reason, "stop")
        self.assertEqual((answer.usage.prompt_tokens, answer.usage.completion_tokens),
                         (USAGE["promptTokenCount"], USAGE["candidatesTokenCount"]))
        self.assertEqual(answer.usage.prompt_tokens_details.cached_tokens, 12)
        path, headers, body = self.last_request()
        self.assertEqual(path, b"/v1beta/models/gemini-x:generateContent")
        self.assertEqual(headers[b"X-Goog-Api-Key"], [API_KEY.encode()])
        self.assertNotIn(b"Authorization", headers)
        self.assertEqual(body, {
            "contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {"temperature": 0.5, "maxOutputTokens": 50}})
        [record] = self.access_records()
        self.assertEqual((record["provider"], record["input_tokens"], record["output_tokens"],
                          record["cached_input_tokens"], record["status"]),
                         ("gem", 30, 9, 12, 200))

    async def test_thoughts_usage(self) -> None:
        """Thoughts are reasoning, apart from the content, and counted as output."""
        answer = await self.sdk(self.client.chat.completions.create, model="gemini-x",
                                messages=MESSAGES, reasoning_effort="high")
        message = answer.choices[0].message
        self.assertEqual(message.content, "".join(TEXT))
        self.assertEqual(message.model_extra["reasoning_content"], THOUGHT)
        self.assertEqual(answer.usage.completion_tokens,
                         USAGE["candidatesTokenCount"] + THOUGHTS_TOKENS)
        self.assertEqual(answer.usage.completion_tokens_details.reasoning_tokens,
                         THOUGHTS_TOKENS)
        self.assertEqual(self.last_request()[2]["generationConfig"],
                         {"thinkingConfig": {"thinkingBudget": 8192, "includeThoughts": True}})

    async def test_stream(self) -> None:
        stream = await self.sdk(self.client.chat.completions.create, model="gemini-x",
                                messages=MESSAGES, stream=True,
                                stream_options={"include_usage": True})
        chunks = await self.sdk(collect_stream, stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, "".join(TEXT))
        self.assertEqual(chunks[-2].choices[0].finish_reason, "stop")
        self.assertEqual((chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens),
                         (30, 9))
        path = self.last_request()[0]
        self.assertEqual(path, b"/v1beta/models/gemini-x:streamGenerateContent")
        self.assertEqual(self.google.queries[-1], {b"alt": [b"sse"]})
        [record] = self.access_records()
        self.assertEqual((record["output_tokens"], record["usage_estimated"]), (9, False))

    async def test_stream_without_usage_asked(self) -> None:
        stream = await self.sdk(self.client.chat.completions.create, model="gemini-x",
                                messages=MESSAGES, stream=True)
        chunks = await self.sdk(collect_stream, stream)
        self.assertTrue(all(c.choices for c in chunks))
        self.assertEqual(self.access_records()[0]["output_tokens"], 9)

    async def test_tools(self) -> None:
        answer = await self.sdk(self.client.chat.completions.create, model="gemini-x",
                                messages=MESSAGES, tools=TOOLS,
                                tool_choice={"type": "function",
                                             "function": {"name": "get_weather"}})
        choice = answer.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        [call] = choice.message.tool_calls
        self.assertEqual((call.function.name, json.loads(call.function.arguments)),
                         ("get_weather", {"city": "Paris"}))
        body = self.last_request()[2]
        self.assertEqual(body["tools"], [{"functionDeclarations": [{
            "name": "get_weather", "description": "Weather in a city",
            "parameters": TOOLS[0]["function"]["parameters"]}]}])
        self.assertEqual(body["toolConfig"], {"functionCallingConfig": {
            "mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
        # The result goes back by name, with the call's thought signature.
        await self.sdk(self.client.chat.completions.create, model="gemini-x", messages=[
            *MESSAGES, choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"}])
        self.assertEqual(self.last_request()[2]["contents"][1:], [
            {"role": "model", "parts": [{"text": "".join(TEXT)},
                                        {"functionCall": {"name": "get_weather",
                                                          "args": {"city": "Paris"}},
                                         "thoughtSignature": "c2lnbmF0dXJl"}]},
            {"role": "user", "parts": [{"functionResponse": {
                "name": "get_weather", "response": {"content": "sunny"}}}]}])

    async def test_tools_streamed(self) -> None:
        tools = [*TOOLS, {"type": "function", "function": {
            "name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
        stream = await self.sdk(self.client.chat.completions.create, model="gemini-x",
                                messages=MESSAGES, tools=tools, stream=True)
        chunks = await self.sdk(collect_stream, stream)
        calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
        self.assertEqual([(c.index, c.function.name, json.loads(c.function.arguments))
                          for c in calls],
                         [(0, "get_weather", {"city": "Paris"}), (1, "get_time",
                                                                  {"city": "Paris"})])
        self.assertEqual(len({c.id for c in calls}), 2)
        self.assertEqual(chunks[-1].choices[0].finish_reason, "tool_calls")

    async def test_image_and_response_format(self) -> None:
        schema = {"type": "object", "additionalProperties": False,
                  "properties": {"name": {"type": "string"}}, "required": ["name"]}
        await self.sdk(self.client.chat.completions.create, model="gemini-x", messages=[
            {"role": "user", "content": [{"type": "text", "text": "Who?"},
                                         {"type": "image_url", "image_url": {"url": IMAGE}}]}],
            response_format={"type": "json_schema", "json_schema": {
                "name": "person", "strict": True, "schema": schema}})
        body = self.last_request()[2]
        self.assertEqual(body["contents"][0]["parts"][1],
                         {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}})
        self.assertEqual(body["generationConfig"], {
            "responseMimeType": "application/json",
            "responseSchema": {"type": "object", "properties": {"name": {"type": "string"}},
                               "required": ["name"]}})

    async def test_blocked_prompt(self) -> None:
        answer = await self.sdk(self.client.chat.completions.create, model="gemini-blocked",
                                messages=MESSAGES)
        self.assertEqual(answer.choices[0].finish_reason, "content_filter")
        self.assertEqual(answer.usage.prompt_tokens, 30)

    async def test_errors(self) -> None:
        """Google's errors become OpenAI's, status kept; Retry-After kept for 429."""
        for model, kind in [("gemini-error-400", openai.BadRequestError),
                            ("gemini-error-401", openai.AuthenticationError),
                            ("gemini-error-403", openai.PermissionDeniedError),
                            ("gemini-error-404", openai.NotFoundError),
                            ("gemini-error-429", openai.RateLimitError),
                            ("gemini-error-500", openai.InternalServerError)]:
            with self.subTest(model):
                with self.assertRaises(kind) as raised:
                    await self.sdk(self.client.chat.completions.create, model=model,
                                   messages=MESSAGES)
                status = int(model.rsplit("-", 1)[1])
                self.assertEqual(raised.exception.body["message"], f"fake gemini error {status}")
                if status == 429:
                    self.assertEqual(raised.exception.response.headers["retry-after"], "7")

    async def test_bad_key(self) -> None:
        with self.assertRaises(openai.BadRequestError) as raised:
            await self.sdk(self.client.chat.completions.create, model="badkey",
                           messages=MESSAGES)
        self.assertIn("API key not valid", raised.exception.body["message"])
        self.assertEqual(raised.exception.body["code"], "invalid_argument")

    async def test_stream_error(self) -> None:
        stream = await self.sdk(self.client.chat.completions.create,
                                model="gemini-stream-error", messages=MESSAGES, stream=True)
        with self.assertRaises(openai.APIError) as raised:
            await self.sdk(collect_stream, stream)
        self.assertIn("overloaded", str(raised.exception))
        [record] = self.access_records()
        self.assertEqual(record["status"], 503)
        self.assertTrue(record["usage_estimated"])

    async def test_client_leaves_stream(self) -> None:
        def read_one_then_leave() -> Any:
            with self.client.chat.completions.create(model="gemini-slow-stream",
                                                     messages=MESSAGES, stream=True) as stream:
                return next(iter(stream))

        self.assertIsNotNone(await self.sdk(read_one_then_leave))
        await self.check_upstream_dropped(self.google, "gemini-slow-stream")


class GeminiEmbeddingsTests(GoogleTestCase):
    async def test_batch_base64(self) -> None:
        """The SDK asks for base64: the gateway encodes Gemini's floats; usage estimated."""
        answer = await self.sdk(self.client.embeddings.create, model="gemini-embedding-001",
                                input=["a", "bbb"], dimensions=3)
        self.assertEqual([item.embedding for item in answer.data],
                         [[1.0, 1.125, 1.25], [3.0, 3.125, 3.25]])
        path, _, body = self.last_request()
        self.assertEqual(path, b"/v1beta/models/gemini-embedding-001:batchEmbedContents")
        self.assertEqual(body["requests"][1], {"model": "models/gemini-embedding-001",
                                               "content": {"parts": [{"text": "bbb"}]},
                                               "outputDimensionality": 3})
        [record] = self.access_records()
        self.assertTrue(record["usage_estimated"])
        self.assertGreater(record["input_tokens"], 0)

    async def test_single_float(self) -> None:
        answer = await self.sdk(self.client.embeddings.create, model="gemini-embedding-001",
                                input="hello", encoding_format="float")
        self.assertEqual(answer.data[0].embedding, [5.0, 5.125, 5.25, 5.375])
        self.assertEqual(self.last_request()[0],
                         b"/v1beta/models/gemini-embedding-001:embedContent")

    async def test_token_arrays_refused(self) -> None:
        with self.assertRaises(openai.BadRequestError):
            await self.sdk(self.client.embeddings.create, model="gemini-embedding-001",
                           input=[[1, 2, 3]], encoding_format="float")


class GeminiMessagesTests(GoogleTestCase):
    """Messages callers reach Gemini through OpenAI chat, both ways."""

    async def test_message(self) -> None:
        answer = await self.sdk(self.anthropic.messages.create, model="gemini-x",
                                max_tokens=100, system="Be brief.", messages=MESSAGES)
        self.assertEqual(answer.content[0].text, "".join(TEXT))
        self.assertEqual(answer.stop_reason, "end_turn")
        self.assertEqual((answer.usage.input_tokens, answer.usage.cache_read_input_tokens,
                          answer.usage.output_tokens), (30 - 12, 12, 9))
        body = self.last_request()[2]
        self.assertEqual(body["systemInstruction"], {"parts": [{"text": "Be brief."}]})
        self.assertEqual(body["generationConfig"], {"maxOutputTokens": 100})

    async def test_stream_with_tools(self) -> None:
        events, message = await self.sdk(final_message, self.anthropic, model="gemini-x",
                                         max_tokens=100, messages=MESSAGES,
                                         tools=MESSAGES_TOOLS)
        self.assertEqual(message.content[0].text, "".join(TEXT))
        tool = message.content[1]
        self.assertEqual((tool.type, tool.name, tool.input),
                         ("tool_use", "get_weather", {"city": "Paris"}))
        self.assertEqual(message.stop_reason, "tool_use")
        self.assertEqual(message.usage.output_tokens, 9)
        [record] = self.access_records()
        self.assertEqual((record["route"], record["input_tokens"], record["status"]),
                         ("messages", 30, 200))

    async def test_thinking_stream(self) -> None:
        events, message = await self.sdk(final_message, self.anthropic, model="gemini-x",
                                         max_tokens=5000, messages=MESSAGES,
                                         thinking={"type": "enabled", "budget_tokens": 2048})
        self.assertEqual((message.content[0].type, message.content[0].thinking),
                         ("thinking", THOUGHT))
        self.assertEqual(message.content[1].text, "".join(TEXT))

    async def test_image(self) -> None:
        await self.sdk(self.anthropic.messages.create, model="gemini-x", max_tokens=10,
                       messages=[{"role": "user", "content": [
                           {"type": "image", "source": {"type": "base64",
                                                        "media_type": "image/png",
                                                        "data": "iVBORw0KGgo="}}]}])
        self.assertEqual(self.last_request()[2]["contents"][0]["parts"],
                         [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}])

    async def test_errors(self) -> None:
        with self.assertRaises(anthropic.RateLimitError) as raised:
            await self.sdk(self.anthropic.messages.create, model="gemini-error-429",
                           max_tokens=10, messages=MESSAGES)
        self.assertEqual(raised.exception.body["error"]["message"], "fake gemini error 429")
        self.assertEqual(raised.exception.response.headers["retry-after"], "7")

    async def test_stream_error(self) -> None:
        with self.assertRaises(anthropic.APIStatusError) as raised:
            await self.sdk(final_message, self.anthropic, model="gemini-stream-error",
                           max_tokens=10, messages=MESSAGES)
        self.assertIn("overloaded", str(raised.exception))
