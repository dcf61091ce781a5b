"""End to end: the openai SDK, the gateway and a fake Anthropic upstream, over loopback."""

from __future__ import annotations

import json

import openai

from tests.fake_anthropic import FINAL_USAGE, TEXT, THINKING, TOOL_INPUT_FRAGMENTS
from tests.gateway_harness import GatewayTestCase
from tests.test_chat import MESSAGES, TOOLS, collect_stream

#: OpenAI's prompt_tokens counts cache reads and writes; Anthropic's input_tokens does not.
PROMPT_TOKENS = (FINAL_USAGE["input_tokens"] + FINAL_USAGE["cache_read_input_tokens"]
                 + FINAL_USAGE["cache_creation_input_tokens"])
IMAGE = "data:image/png;base64,iVBORw0KGgo="


class AnthropicProviderTests(GatewayTestCase):
    async def test_completion(self) -> None:
        """A plain call becomes a Messages request with Anthropic's headers, and back."""
        answer = await self.sdk(self.client.chat.completions.create, model="claude-x",
                                messages=[{"role": "system", "content": "Be brief."},
                                          *MESSAGES])
        self.assertEqual(answer.choices[0].message.content, "".join(TEXT))
        self.assertEqual(answer.choices[0].finish_reason, "stop")
        self.assertEqual((answer.usage.prompt_tokens, answer.usage.completion_tokens,
                          answer.usage.total_tokens), (PROMPT_TOKENS, 9, PROMPT_TOKENS + 9))
        self.assertEqual(answer.usage.prompt_tokens_details.cached_tokens, 7)
        path, headers, body = self.claude.requests[0]
        self.assertEqual(path, b"/v1/messages")
        self.assertEqual(headers[b"X-Api-Key"], [b"sk-ant-upstream"])
        self.assertEqual(headers[b"Anthropic-Version"], [b"2023-06-01"])
        self.assertEqual(headers[b"Anthropic-Beta"], [b"tools-2024-04-04"])
        self.assertNotIn(b"Authorization", headers)
        self.assertEqual(body, {"model": "claude-x", "system": "Be brief.", "max_tokens": 512,
                                "messages": [{"role": "user", "content": [
                                    {"type": "text", "text": "Say hello"}]}]})
        [record] = self.access_records()
        self.assertEqual(
            {k: record[k] for k in ("route", "provider", "input_tokens", "output_tokens",
                                    "cached_input_tokens", "cache_creation_input_tokens")},
            {"route": "chat", "provider": "claude", "input_tokens": PROMPT_TOKENS,
             "output_tokens": 9, "cached_input_tokens": 7, "cache_creation_input_tokens": 5})

    async def test_cache_tokens_metrics(self) -> None:
        """Cache reads and writes are token types of their own, beside the whole input."""
        await self.sdk(self.client.chat.completions.create, model="claude-x", messages=MESSAGES)
        samples = await self.metrics()
        labels = (("gen_ai_operation_name", "chat"), ("gen_ai_provider_name", "anthropic"),
                  ("gen_ai_request_model", "claude-x"))
        counts = {kind: samples[("txgateway_gen_ai_client_token_usage_sum",
                                 (*labels, ("gen_ai_token_type", kind)))]
                  for kind in ("input", "output", "cached_input", "cache_creation_input")}
        self.assertEqual(counts, {
            "input": PROMPT_TOKENS, "output": FINAL_USAGE["output_tokens"],
            "cached_input": FINAL_USAGE["cache_read_input_tokens"],
            "cache_creation_input": FINAL_USAGE["cache_creation_input_tokens"]})

    async def test_model_renamed_and_parameters(self) -> None:
        await self.sdk(self.client.chat.completions.create, model="claude-renamed",
                       messages=MESSAGES, max_completion_tokens=99, temperature=0.2,
                       top_p=0.9, stop="END", user="u-1")
        body = self.claude.requests[0][2]
        self.assertEqual(
            {k: body[k] for k in ("model", "max_tokens", "temperature", "top_p",
                                  "stop_sequences", "metadata")},
            {"model": "claude-upstream", "max_tokens": 99, "temperature": 0.2, "top_p": 0.9,
             "stop_sequences": ["END"], "metadata": {"user_id": "u-1"}})

    async def test_stream(self) -> None:
        """Text deltas arrive as chunks; usage is the last cumulative value, not a sum."""
        stream = await self.sdk(self.client.chat.completions.create, model="claude-x",
                                messages=MESSAGES, stream=True,
                                stream_options={"include_usage": True})
        chunks = await self.sdk(collect_stream, stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, "".join(TEXT))
        self.assertEqual(chunks[-2].choices[0].finish_reason, "stop")
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual((chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens),
                         (PROMPT_TOKENS, 9))
        self.assertTrue(self.claude.requests[0][2]["stream"])
        [record] = self.access_records()
        self.assertEqual((record["input_tokens"], record["output_tokens"], record["status"]),
                         (PROMPT_TOKENS, 9, 200))
        self.assertFalse(record["usage_estimated"])

    async def test_stream_without_usage_asked(self) -> None:
        stream = await self.sdk(self.client.chat.completions.create, model="claude-x",
                                messages=MESSAGES, stream=True)
        chunks = await self.sdk(collect_stream, stream)
        self.assertTrue(all(c.choices for c in chunks))
        self.assertEqual(self.access_records()[0]["output_tokens"], 9)

    async def test_tools(self) -> None:
        answer = await self.sdk(self.client.chat.completions.create, model="claude-x",
                                messages=MESSAGES, tools=TOOLS, tool_choice="required",
                                parallel_tool_calls=False)
        choice = answer.choices[0]
        self.assertEqual(choice.finish_reason, "tool_calls")
        call = choice.message.tool_calls[0]
        self.assertEqual((call.id, call.function.name), ("toolu_fake_get_weather",
                                                         "get_weather"))
        self.assertEqual(json.loads(call.function.arguments), {"city": "Paris"})
        body = self.claude.requests[0][2]
        self.assertEqual(body["tool_choice"], {"type": "any",
                                               "disable_parallel_tool_use": True})
        self.assertEqual(body["tools"], [{
            "name": "get_weather", "description": "Weather in a city",
            "input_schema": TOOLS[0]["function"]["parameters"]}])

    async def test_tools_streamed(self) -> None:
        """Streamed argument fragments reassemble equal; the index and id stay stable."""
        tools = [*TOOLS, {"type": "function", "function": {"name": "get_time",
                                                            "parameters": {"type": "object"}}}]
        stream = await self.sdk(self.client.chat.completions.create, model="claude-x",
                                messages=MESSAGES, tools=tools, stream=True)
        chunks = await self.sdk(collect_stream, stream)
        calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
        by_index: dict[int, list] = {}
        for call in calls:
            by_index.setdefault(call.index, []).append(call)
        self.assertEqual(sorted(by_index), [0, 1])
        for index, name in ((0, "get_weather"), (1, "get_time")):
            first, *rest = by_index[index]
            self.assertEqual((first.id, first.function.name), ("toolu_fake_" + name, name))
            self.assertTrue(all(call.id is None and call.function.name is None
                                for call in rest))
            arguments = "".join(call.function.arguments or "" for call in by_index[index])
            self.assertEqual(arguments, "".join(TOOL_INPUT_FRAGMENTS))
        self.assertEqual(chunks[-1].choices[0].finish_reason, "tool_calls")

    async def test_tool_turns(self) -> None:
        """Tool results go back as tool_result blocks in one user turn."""
        history = [*MESSAGES, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
            {"id": "t2", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "cold"},
            {"role": "tool", "tool_call_id": "t2", "content": "warm"}]
        await self.sdk(self.client.chat.completions.create, model="claude-x",
                       messages=history, tools=TOOLS)
        messages = self.claude.requests[0][2]["messages"]
        self.assertEqual(messages[1:], [
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "t1", "name": "get_weather",
                 "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "t2", "name": "get_weather",
                 "input": {"city": "Rome"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "cold"},
                {"type": "tool_result", "tool_use_id": "t2", "content": "warm"}]}])

    async def test_images(self) -> None:
        await self.sdk(self.client.chat.completions.create, model="claude-x", messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image_url", "image_url": {"url": IMAGE}},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])
        self.assertEqual(self.claude.requests[0][2]["messages"][0]["content"][1:], [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}])

    async def test_thinking(self) -> None:
        """reasoning_effort asks for a thinking budget; thinking comes back as reasoning."""
        answer = await self.sdk(self.client.chat.completions.create, model="claude-x",
                                messages=MESSAGES, reasoning_effort="medium",
                                max_completion_tokens=4000)
        self.assertEqual(self.claude.requests[0][2]["thinking"],
                         {"type": "enabled", "budget_tokens": 2048})
        self.assertEqual(answer.choices[0].message.reasoning_content, "".join(THINKING))
        self.assertEqual(answer.choices[0].message.content, "".join(TEXT))
        stream = await self.sdk(self.client.chat.completions.create, model="claude-x",
                                messages=MESSAGES, reasoning_effort="medium",
                                max_completion_tokens=4000, stream=True)
        chunks = await self.sdk(collect_stream, stream)
        reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or ""
                            for c in chunks)
        self.assertEqual(reasoning, "".join(THINKING))

    async def test_stop_reasons(self) -> None:
        for model, finish in (("claude-max-tokens", "length"),
                              ("claude-stop-sequence", "stop"),
                              ("claude-refusal", "content_filter")):
            answer = await self.sdk(self.client.chat.completions.create, model=model,
                                    messages=MESSAGES)
            self.assertEqual(answer.choices[0].finish_reason, finish, model)
            stream = await self.sdk(self.client.chat.completions.create, model=model,
                                    messages=MESSAGES, stream=True)
            chunks = await self.sdk(collect_stream, stream)
            self.assertEqual(chunks[-1].choices[0].finish_reason, finish, model)

    async def test_errors(self) -> None:
        """Anthropic errors become OpenAI errors with the same status."""
        for status, error_class in [(400, openai.BadRequestError),
                                    (401, openai.AuthenticationError),
                                    (429, openai.RateLimitError),
                                    (529, openai.InternalServerError)]:
            with self.assertRaises(error_class) as caught:
                await self.sdk(self.client.chat.completions.create,
                               model=f"claude-error-{status}", messages=MESSAGES)
            self.assertEqual(caught.exception.status_code, status)
            self.assertEqual(caught.exception.body["message"],
                             f"fake anthropic error {status}")
            if status == 429:
                self.assertEqual(caught.exception.response.headers["retry-after"], "7")

    async def test_error_mid_stream(self) -> None:
        """An upstream error event becomes an error the openai SDK raises."""
        stream = await self.sdk(self.client.chat.completions.create, model="claude-stream-error",
                                messages=MESSAGES, stream=True)
        with self.assertRaises(openai.APIError) as caught:
            await self.sdk(collect_stream, stream)
        self.assertIn("Overloaded", str(caught.exception))
        [record] = self.access_records()
        self.assertEqual(record["status"], 529)

    async def test_cut_stream(self) -> None:
        stream = await self.sdk(self.client.chat.completions.create, model="claude-cut-stream",
                                messages=MESSAGES, stream=True)
        with self.assertRaises(openai.APIError) as caught:
            await self.sdk(collect_stream, stream)
        self.assertIn("broke", str(caught.exception))
        [record] = self.access_records()
        self.assertEqual(record["status"], 502)
        # message_start's usage was seen before the cut.
        self.assertEqual(record["input_tokens"], PROMPT_TOKENS)
