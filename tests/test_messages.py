"""End to end: the anthropic SDK against the gateway, to Anthropic and OpenAI upstreams."""

from __future__ import annotations

import anthropic
import orjson
import treq

from tests.fake_anthropic import FINAL_USAGE, TEXT, THINKING
from tests.fake_openai import CONTENT, TOOL_ARGUMENT_FRAGMENTS, USAGE
from tests.gateway_harness import GatewayTestCase

MESSAGES = [{"role": "user", "content": "Say hello"}]
TOOLS = [{"name": "get_weather", "description": "Weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                           "required": ["city"]}}]


def final_message(client: anthropic.Anthropic, **kwargs: object) -> tuple[list, object]:
    """Stream with the SDK's helper: its events and the message it accumulated."""
    with client.messages.stream(**kwargs) as stream:
        events = list(stream)
        return events, stream.get_final_message()


class MessagesTestCase(GatewayTestCase):
    async def _start(self) -> None:
        await super()._start()
        self.anthropic = anthropic.Anthropic(base_url=self.base_url, api_key="sk-caller",
                                             max_retries=0, timeout=10)
        self.addCleanup(self.anthropic.close)


class ToAnthropicTests(MessagesTestCase):
    """The same-dialect fast path."""

    async def test_message(self) -> None:
        answer = await self.sdk(self.anthropic.messages.create, model="claude-x",
                                max_tokens=100, messages=MESSAGES)
        self.assertEqual(answer.content[0].text, "".join(TEXT))
        self.assertEqual(answer.usage.cache_read_input_tokens, 7)
        path, headers, body = self.claude.requests[0]
        self.assertEqual(path, b"/v1/messages")
        self.assertEqual(body, {"model": "claude-x", "max_tokens": 100, "messages": MESSAGES})
        self.assertEqual(headers[b"X-Api-Key"], [b"sk-ant-upstream"])
        [record] = self.access_records()
        self.assertEqual((record["route"], record["input_tokens"], record["output_tokens"],
                          record["cache_creation_input_tokens"]), ("messages", 32, 9, 5))

    async def test_body_passes_through(self) -> None:
        """Fields the gateway does not know reach the upstream untouched; only model changes."""
        request = {"model": "claude-renamed", "max_tokens": 10, "messages": MESSAGES,
                   "top_k": 3, "some_future_field": {"x": [1, "é"]}}
        response = await self.post("/anthropic/v1/messages", orjson.dumps(request))
        self.assertEqual(response.code, 200)
        await response.content()
        self.assertEqual(self.claude.requests[0][2], {**request, "model": "claude-upstream"})

    async def test_caller_version_and_betas_forwarded(self) -> None:
        """
        The caller's betas reach the upstream with the configured one, each once; its
        ``anthropic-version`` replaces the configured one, since its body passes through.
        """
        caller = {"anthropic-beta": "prompt-caching-2024-07-31, tools-2024-04-04",
                  "anthropic-version": "2023-01-01"}
        await self.sdk(self.anthropic.messages.create, model="claude-x", max_tokens=10,
                       messages=MESSAGES, extra_headers=caller)
        await self.sdk(self.anthropic.messages.count_tokens, model="claude-x",
                       messages=MESSAGES, extra_headers={"anthropic-beta": "output-128k"})
        bare = {"model": "claude-x", "max_tokens": 10, "messages": MESSAGES}
        await (await self.post("/v1/messages", orjson.dumps(bare))).content()
        sdk_version = self.anthropic.default_headers["anthropic-version"].encode()
        sent = [(headers[b"Anthropic-Beta"], headers[b"Anthropic-Version"])
                for _, headers, _ in self.claude.requests]
        self.assertEqual(sent, [
            ([b"tools-2024-04-04,prompt-caching-2024-07-31"], [b"2023-01-01"]),
            ([b"tools-2024-04-04,output-128k"], [sdk_version]),
            ([b"tools-2024-04-04"], [b"2023-06-01"])])

    async def test_stream_usage_not_summed(self) -> None:
        """Events pass as they came; usage is the last cumulative value."""
        events, message = await self.sdk(final_message, self.anthropic, model="claude-x",
                                         max_tokens=100, messages=MESSAGES, tools=TOOLS,
                                         thinking={"type": "enabled", "budget_tokens": 1024})
        self.assertEqual([block.type for block in message.content],
                         ["thinking", "text", "tool_use"])
        self.assertEqual(message.content[0].thinking, "".join(THINKING))
        self.assertEqual(message.content[2].input, {"city": "Paris"})
        self.assertEqual(message.stop_reason, "tool_use")
        self.assertEqual(message.usage.output_tokens, FINAL_USAGE["output_tokens"])
        [record] = self.access_records()
        self.assertEqual((record["input_tokens"], record["output_tokens"]), (32, 9))
        self.assertFalse(record["usage_estimated"])

    async def test_errors(self) -> None:
        for status, error_class in [(400, anthropic.BadRequestError),
                                    (429, anthropic.RateLimitError),
                                    (529, anthropic.InternalServerError)]:
            with self.assertRaises(error_class) as caught:
                await self.sdk(self.anthropic.messages.create, model=f"claude-error-{status}",
                               max_tokens=10, messages=MESSAGES)
            self.assertEqual(caught.exception.status_code, status)
            self.assertEqual(caught.exception.body["error"]["message"],
                             f"fake anthropic error {status}")

    async def test_error_mid_stream(self) -> None:
        with self.assertRaises(anthropic.APIStatusError) as caught:
            await self.sdk(final_message, self.anthropic, model="claude-stream-error",
                           max_tokens=10, messages=MESSAGES)
        self.assertIn("Overloaded", str(caught.exception))
        self.assertEqual(self.access_records()[0]["status"], 529)

    async def test_count_tokens(self) -> None:
        """Counted by the upstream itself."""
        count = await self.sdk(self.anthropic.messages.count_tokens, model="claude-x",
                               messages=MESSAGES)
        self.assertEqual(count.input_tokens, 1001)
        self.assertEqual(self.claude.requests[0][0], b"/v1/messages/count_tokens")

    async def test_count_tokens_under_anthropic_prefix(self) -> None:
        """The anthropic SDK's ``base_url`` may end in ``/anthropic``: counting works there."""
        client = anthropic.Anthropic(base_url=self.base_url + "/anthropic", api_key="sk-caller",
                                     max_retries=0, timeout=10)
        self.addCleanup(client.close)
        count = await self.sdk(client.messages.count_tokens, model="claude-renamed",
                               messages=MESSAGES * 2)
        self.assertEqual(count.input_tokens, 1002)
        path, _, body = self.claude.requests[0]
        self.assertEqual((path, body["model"]), (b"/v1/messages/count_tokens",
                                                 "claude-upstream"))

    async def test_unknown_path_and_method_in_anthropic_dialect(self) -> None:
        """Under ``/v1/messages`` even URL and method errors are Anthropic error objects."""
        for path in ("/v1/messages/nope", "/anthropic/v1/messages/nope/deeper"):
            with self.assertRaises(anthropic.NotFoundError) as caught:
                await self.sdk(self.anthropic.post, path, body={}, cast_to=object)
            self.assertEqual(caught.exception.body, {"type": "error", "error": {
                "type": "not_found_error", "message": f"Invalid URL (POST {path})"}})
        response = await treq.get(self.base_url + "/v1/messages", pool=self.pool)
        self.assertEqual((response.code, response.headers.getRawHeaders(b"allow")),
                         (405, [b"POST"]))
        self.assertEqual((await response.json())["error"]["type"], "invalid_request_error")
        self.assertEqual(self.claude.requests, [])


class ToOpenAITests(MessagesTestCase):
    """Messages to an OpenAI-compatible provider, through the internal chat shape."""

    async def test_message(self) -> None:
        answer = await self.sdk(self.anthropic.messages.create, model="gpt-4o", max_tokens=50,
                                system="Be brief.", messages=MESSAGES, stop_sequences=["END"],
                                extra_body={"temperature": 0.3})
        self.assertEqual(answer.content[0].text, "".join(CONTENT))
        self.assertEqual(answer.stop_reason, "end_turn")
        cached = USAGE["prompt_tokens_details"]["cached_tokens"]
        self.assertEqual((answer.usage.input_tokens, answer.usage.cache_read_input_tokens,
                          answer.usage.output_tokens),
                         (USAGE["prompt_tokens"] - cached, cached, USAGE["completion_tokens"]))
        self.assertEqual(self.fake.requests[0][2], {
            "model": "gpt-4o", "max_completion_tokens": 50, "stop": ["END"],
            "temperature": 0.3, "messages": [{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Say hello"}]})

    async def test_stream(self) -> None:
        events, message = await self.sdk(final_message, self.anthropic, model="gpt-4o",
                                         max_tokens=50, messages=MESSAGES)
        self.assertEqual(message.content[0].text, "".join(CONTENT))
        self.assertEqual(message.stop_reason, "end_turn")
        self.assertEqual(message.usage.output_tokens, USAGE["completion_tokens"])
        self.assertEqual(message.usage.input_tokens, USAGE["prompt_tokens"] - 3)
        self.assertEqual(self.fake.requests[0][2]["stream_options"], {"include_usage": True})

    async def test_tools(self) -> None:
        answer = await self.sdk(self.anthropic.messages.create, model="gpt-4o", max_tokens=50,
                                messages=MESSAGES, tools=TOOLS,
                                tool_choice={"type": "any"})
        [call] = answer.content
        self.assertEqual((call.type, call.name, call.input),
                         ("tool_use", "get_weather", {"city": "Paris"}))
        self.assertEqual(answer.stop_reason, "tool_use")
        sent = self.fake.requests[0][2]
        self.assertEqual(sent["tool_choice"], "required")
        self.assertEqual(sent["tools"][0]["function"]["parameters"], TOOLS[0]["input_schema"])

    async def test_tools_streamed(self) -> None:
        events, message = await self.sdk(final_message, self.anthropic, model="gpt-4o",
                                         max_tokens=50, messages=MESSAGES, tools=TOOLS)
        [call] = message.content
        self.assertEqual((call.id, call.name, call.input),
                         ("call_fake1", "get_weather", {"city": "Paris"}))
        fragments = [e.delta.partial_json for e in events
                     if e.type == "content_block_delta" and e.delta.type == "input_json_delta"]
        self.assertEqual("".join(fragments), "".join(TOOL_ARGUMENT_FRAGMENTS))

    async def test_tool_turn(self) -> None:
        """A tool_result becomes a tool message after the assistant's tool call."""
        history = [*MESSAGES, {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Oslo"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "cold"},
                {"type": "text", "text": "And now?"}]}]
        await self.sdk(self.anthropic.messages.create, model="gpt-4o", max_tokens=50,
                       messages=history, tools=TOOLS)
        self.assertEqual(self.fake.requests[0][2]["messages"][1:], [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "t1", "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]},
            {"role": "tool", "tool_call_id": "t1", "content": "cold"},
            {"role": "user", "content": [{"type": "text", "text": "And now?"}]}])

    async def test_errors(self) -> None:
        """OpenAI errors reach the anthropic SDK in Anthropic's shape, status kept."""
        for status, error_class, kind in [
                (400, anthropic.BadRequestError, "invalid_request_error"),
                (401, anthropic.AuthenticationError, "authentication_error"),
                (429, anthropic.RateLimitError, "rate_limit_error")]:
            with self.assertRaises(error_class) as caught:
                await self.sdk(self.anthropic.messages.create, model=f"error-{status}",
                               max_tokens=10, messages=MESSAGES)
            self.assertEqual(caught.exception.body, {"type": "error", "error": {
                "type": kind, "message": f"fake upstream error {status}"}})

    async def test_stream_stalls(self) -> None:
        with self.assertRaises(anthropic.APIStatusError) as caught:
            await self.sdk(final_message, self.anthropic, model="stall-stream",
                           max_tokens=10, messages=MESSAGES)
        self.assertIn("sent nothing", str(caught.exception))
        self.assertEqual(self.access_records()[0]["status"], 504)

    async def test_demo_stream(self) -> None:
        events, message = await self.sdk(final_message, self.anthropic, model="demo",
                                         max_tokens=100, messages=MESSAGES)
        self.assertIn("Say hello", message.content[0].text)

    async def test_count_tokens_estimated(self) -> None:
        """No count endpoint upstream: the local estimate, four bytes of text a token."""
        count = await self.sdk(self.anthropic.messages.count_tokens, model="gpt-4o",
                               system="x" * 40, messages=[{"role": "user", "content": "y" * 80}])
        self.assertEqual(count.input_tokens, 30)
        self.assertEqual(self.fake.requests, [])


class BadInputTests(MessagesTestCase):
    async def check_error(self, body: bytes, status: int, kind: str) -> None:
        response = await self.post("/v1/messages", body)
        self.assertEqual(response.code, status)
        self.assertEqual((await response.json())["error"]["type"], kind)

    async def test_bad_requests(self) -> None:
        await self.check_error(b"{", 400, "invalid_request_error")
        await self.check_error(b'{"model": "m", "messages": []}', 400, "invalid_request_error")
        await self.check_error(b'{"max_tokens": 5, "messages": []}', 400,
                               "invalid_request_error")
        self.service.gateway.router._patterns.clear()
        await self.check_error(b'{"model": "nope", "max_tokens": 5, "messages": []}', 404,
                               "not_found_error")
