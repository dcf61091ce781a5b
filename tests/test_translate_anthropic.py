"""
Table-driven translation tests, both directions, on agentgateway's published vectors
(../shared/vectors/agentgateway: captured payloads and that project's expected output).

Where we differ on purpose the test says so and normalises that one point:
- consecutive tool results are merged into one user turn (Anthropic wants alternating turns);
- OpenAI ``prompt_tokens`` counts cache reads and writes (agentgateway reports Anthropic's
  cache-exclusive ``input_tokens`` there), so usage is checked against our own arithmetic.
"""

from __future__ import annotations

import json
import unittest

import orjson

from tests.vectors import needs_vectors, snapshot, vector
from txgateway.translate.chat_to_messages import (
    MessagesToChatStream,
    chat_completion,
    messages_request,
)
from txgateway.translate.messages_to_chat import ChatToMessagesStream, chat_request, message
from txgateway.usage import Usage


def merge_tool_results(messages: list[dict]) -> list[dict]:
    merged: list[dict] = []
    for turn in messages:
        results = all(block.get("type") == "tool_result" for block in turn["content"])
        if results and merged and merged[-1]["role"] == "user" and all(
                block.get("type") == "tool_result" for block in merged[-1]["content"]):
            merged[-1]["content"] += turn["content"]
        else:
            merged.append(turn)
    return merged


@needs_vectors
class ChatToMessagesVectors(unittest.TestCase):
    def test_requests(self) -> None:
        for case in ("basic", "full", "tool-call", "image-url", "reasoning", "reasoning_max"):
            with self.subTest(case):
                chat = orjson.loads(vector(f"requests/completions/{case}.json"))
                expected = snapshot(f"requests/completions/{case}.anthropic.snap")["request"]
                expected["messages"] = merge_tool_results(expected["messages"])
                self.assertEqual(messages_request(chat, chat["model"], 4096), expected)

    def test_responses(self) -> None:
        for case in ("basic", "thinking", "tool", "multiple_text_blocks"):
            with self.subTest(case):
                answer = orjson.loads(vector(f"response/anthropic/{case}.json"))
                expected = snapshot(f"response/anthropic/{case}.messages-completions.snap")
                completion, usage = chat_completion(answer, 0)
                choice, want = completion["choices"][0], expected["response"]["choices"][0]
                self.assertEqual(choice["finish_reason"], want["finish_reason"])
                for key in ("content", "reasoning_content", "tool_calls"):
                    got = choice["message"].get(key)
                    if key == "tool_calls" and got:
                        got = [{**call, "function": {**call["function"], "arguments": json.loads(
                            call["function"]["arguments"])}} for call in got]
                        for call in want["message"][key]:
                            call["function"]["arguments"] = json.loads(
                                call["function"]["arguments"])
                    self.assertEqual(got, want["message"].get(key), key)
                raw = answer["usage"]
                self.assertEqual(usage, Usage.from_anthropic(raw))
                self.assertEqual(completion["usage"]["prompt_tokens"],
                                 raw["input_tokens"] + raw.get("cache_read_input_tokens", 0)
                                 + raw.get("cache_creation_input_tokens", 0))
                self.assertEqual(completion["usage"]["prompt_tokens_details"]["cached_tokens"],
                                 raw.get("cache_read_input_tokens", 0))

    def test_streams(self) -> None:
        """Fed one byte at a time, each stream gives the snapshot's text, tools and usage."""
        for case in ("stream_basic", "stream_thinking", "stream_tool", "stream_tool_empty_args",
                     "stream_message_delta_usage"):
            with self.subTest(case):
                source = vector(f"response/anthropic/{case}.json")
                translator = MessagesToChatStream(0, wants_usage=True)
                out = b"".join(translator.feed(source[i:i + 1]) for i in range(len(source)))
                expected = snapshot_stream(
                    f"response/anthropic/{case}.messages-completions-streaming.snap")
                self.assertEqual(chunks_summary(out), chunks_summary(expected))
                summary = stream_usage(f"response/anthropic/{case}."
                                       "messages-completions-streaming.snap")
                self.assertEqual(translator.usage.output_tokens, summary["output_tokens"])


def snapshot_stream(path: str) -> bytes:
    text = vector(path).decode()
    body = text[text.index("\n---\n", 4) + 5:]
    return body[:body.index("data: [DONE]") + len("data: [DONE]")].encode()


def stream_usage(path: str) -> dict:
    text = vector(path).decode()
    return json.loads(text[text.rindex("\n{\n") + 1:])


def chunks_summary(sse: bytes) -> dict:
    """What a client reassembles from chunks: text, reasoning, tool calls, finish."""
    text, reasoning, calls, finish = [], [], {}, None
    for line in sse.decode().split("\n"):
        if not line.startswith("data: {"):
            continue
        for choice in json.loads(line[6:]).get("choices") or []:
            delta = choice.get("delta") or {}
            text.append(delta.get("content") or "")
            reasoning.append(delta.get("reasoning_content") or "")
            for call in delta.get("tool_calls") or []:
                entry = calls.setdefault(call["index"], {"id": None, "name": None,
                                                         "arguments": ""})
                entry["id"] = entry["id"] or call.get("id")
                function = call.get("function") or {}
                entry["name"] = entry["name"] or function.get("name")
                entry["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return {"text": "".join(text), "reasoning": "".join(reasoning), "calls": calls,
            "finish": finish}


@needs_vectors
class MessagesToChatVectors(unittest.TestCase):
    def test_requests(self) -> None:
        """Same request, but a string content stays a string (both mean the same to OpenAI)."""
        for case in ("basic", "tools", "structured-output"):
            with self.subTest(case):
                request = orjson.loads(vector(f"requests/messages/{case}.json"))
                expected = snapshot(f"requests/messages/{case}.completions.snap")["request"]
                expected.pop("stream")
                for turn in expected["messages"]:
                    parts = turn["content"]
                    if len(parts) == 1 and parts[0]["type"] == "text":
                        turn["content"] = parts[0]["text"]
                got = chat_request(request, request["model"])
                got.pop("reasoning_effort", None)  # from output_config.effort, which they drop
                self.assertEqual(got, expected)

    def test_responses(self) -> None:
        for case in ("basic", "tool_call"):
            with self.subTest(case):
                completion = orjson.loads(vector(f"response/completions/{case}.json"))
                expected = snapshot(f"response/completions/{case}.completions-messages.snap")
                answer, _ = message(completion)
                want = expected["response"]
                self.assertEqual(answer["content"], want["content"])
                self.assertEqual(answer["stop_reason"], want["stop_reason"])
                self.assertEqual(answer["usage"]["output_tokens"], want["usage"]["output_tokens"])

    def test_stream(self) -> None:
        """Event names and text as in the snapshot, fed one byte at a time."""
        source = vector("response/completions/stream.json")
        translator = ChatToMessagesStream("m")
        out = b"".join(translator.feed(source[i:i + 1]) for i in range(len(source)))
        out += translator.finish()
        text = vector("response/completions/stream.completions-messages-streaming.snap")
        text = text[text.index(b"\n---\n", 4) + 5:]
        self.assertEqual(event_names(out), event_names(text))
        self.assertEqual(deltas(out), deltas(text))


def event_names(sse: bytes) -> list[str]:
    return [line[7:] for line in sse.decode().split("\n") if line.startswith("event: ")]


def deltas(sse: bytes) -> str:
    return "".join(json.loads(line[6:])["delta"].get("text", "")
                   for line in sse.decode().split("\n")
                   if line.startswith("data: ") and '"content_block_delta"' in line)


@needs_vectors
class CompleteTests(unittest.TestCase):
    def test_a_translated_stream_is_complete_once_its_done_is_written(self) -> None:
        source = vector("response/anthropic/stream_message_delta_usage.json")
        translator = MessagesToChatStream(0, wants_usage=True)
        end = source.index(b"message_stop")
        translator.feed(source[:end - 20])
        self.assertFalse(translator.complete)
        out = translator.feed(source[end - 20:])
        self.assertIn(b"data: [DONE]", out)
        self.assertTrue(translator.complete)
