"""
The Gemini translation, table-driven: requests, answers and streams against agentgateway's
published vectors (found by `tests.vectors`, Apache-2.0) and our own cases.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
from twisted.trial.unittest import TestCase

from tests.vectors import needs_vectors, snapshot, vector
from txgateway.plugins.gemini import wire as gemini
from txgateway.translate import Untranslatable
from txgateway.translate.chain import ChainedStream
from txgateway.translate.messages_to_chat import ChatToMessagesStream
from txgateway.usage import Usage

#: Request vectors whose expected upstream body we match exactly.
REQUEST_CASES = ["basic", "generation-config", "image-file", "image-inline", "multi-turn-tools",
                 "parallel-tool-call", "reasoning", "structured-output", "tool-call"]
RESPONSE_CASES = ["basic", "blocked", "reasoning", "tool"]


@needs_vectors
class VectorRequestTests(TestCase):

    def test_requests(self) -> None:
        for case in REQUEST_CASES:
            base = f"requests/completions/{case}"
            chat = json.loads(vector(base + ".json"))
            expected = snapshot(base + ".vertex-gemini.snap")["request"]
            with self.subTest(case=case):
                self.assertEqual(gemini.generate_request(chat), expected)

    def test_responses(self) -> None:
        for case in RESPONSE_CASES:
            base = f"response/vertex-gemini/{case}"
            answer = orjson.loads(vector(base + ".json"))
            expected = snapshot(base + ".vertex-gemini-completions.snap")["response"]
            completion, usage = gemini.chat_completion(answer, 123)
            with self.subTest(case=case):
                choice, wanted = completion["choices"][0], expected["choices"][0]
                self.assertEqual(choice["finish_reason"], wanted["finish_reason"])
                for key in ("content", "reasoning_content", "tool_calls"):
                    self.assertEqual(choice["message"].get(key), wanted["message"].get(key))
                for key, value in expected["usage"].items():
                    if key.endswith("_details"):
                        for name, count in value.items():
                            self.assertEqual(completion["usage"][key][name], count)
                    else:
                        self.assertEqual(completion["usage"][key], value)
                self.assertEqual(completion["model"], expected["model"])
                self.assertEqual(usage.input_tokens, completion["usage"]["prompt_tokens"])

    def test_stream_tool(self) -> None:
        """One chunk holding a whole call and the finish: one complete tool call delta."""
        raw = vector("response/vertex-gemini/stream_tool.json")
        translator = gemini.GeminiToChatStream(123, True)
        chunks = _chunks(translator.feed(raw) + translator.finish())
        calls = [call for chunk in chunks for choice in chunk["choices"]
                 for call in choice["delta"].get("tool_calls") or []]
        self.assertEqual(calls, [{"index": 0, "id": "fc_native", "type": "function",
                                  "function": {"name": "get_weather",
                                               "arguments": '{"location":"Tokyo"}'}}])
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 12)
        self.assertEqual([c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1],
                         "tool_calls")


def _chunks(stream: bytes) -> list[dict[str, Any]]:
    payloads = [line[6:] for line in stream.split(b"\n") if line.startswith(b"data: ")]
    assert payloads[-1] == b"[DONE]", payloads[-1]
    return [orjson.loads(payload) for payload in payloads[:-1]]


class SchemaTests(TestCase):
    CASES = [
        ("keys Gemini refuses are dropped",
         {"type": "object", "$schema": "x", "additionalProperties": False, "strict": True,
          "properties": {"a": {"type": "string", "examples": ["x"], "default": "y",
                               "title": "A"}}},
         {"type": "object", "properties": {"a": {"type": "string", "default": "y",
                                                 "title": "A"}}}),
        ("references are inlined, a recursive one as a plain object",
         {"type": "object", "properties": {"n": {"$ref": "#/$defs/Node"}},
          "$defs": {"Node": {"type": "object", "properties": {
              "next": {"$ref": "#/$defs/Node"}}}}},
         {"type": "object", "properties": {"n": {"type": "object", "properties": {
             "next": {"type": "object"}}}}}),
        ("nullable types",
         {"type": ["string", "null"]}, {"type": "string", "nullable": True}),
        ("anyOf with null",
         {"anyOf": [{"type": "integer"}, {"type": "null"}]},
         {"nullable": True, "type": "integer"}),
        ("const and oneOf",
         {"oneOf": [{"const": "a"}, {"type": "integer", "exclusiveMinimum": 0}]},
         {"anyOf": [{"enum": ["a"]}, {"type": "integer"}]}),
        ("enums of numbers go (Gemini's are strings); empty properties go",
         {"type": "object", "properties": {}, "enum": [1, 2]}, {"type": "object"}),
        ("arrays",
         {"type": "array", "items": {"type": "object", "additionalProperties": {}}},
         {"type": "array", "items": {"type": "object"}}),
    ]

    def test_clean(self) -> None:
        for name, schema, expected in self.CASES:
            with self.subTest(name):
                self.assertEqual(gemini.clean_schema(schema), expected)

    def test_tool_without_parameters(self) -> None:
        request = gemini.generate_request({"messages": [], "tools": [{"type": "function",
            "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]})
        self.assertEqual(request["tools"], [{"functionDeclarations": [{"name": "now"}]}])


class RequestTests(TestCase):
    CASES = [
        ("tool_choice auto", {"tool_choice": "auto"},
         "toolConfig", {"functionCallingConfig": {"mode": "AUTO"}}),
        ("tool_choice none", {"tool_choice": "none"},
         "toolConfig", {"functionCallingConfig": {"mode": "NONE"}}),
        ("tool_choice required", {"tool_choice": "required"},
         "toolConfig", {"functionCallingConfig": {"mode": "ANY"}}),
        ("max_completion_tokens and a single stop", {"max_completion_tokens": 5, "stop": "X"},
         "generationConfig", {"maxOutputTokens": 5, "stopSequences": ["X"]}),
        ("json_object", {"response_format": {"type": "json_object"}},
         "generationConfig", {"responseMimeType": "application/json"}),
        ("reasoning off", {"reasoning_effort": "none"},
         "generationConfig", {"thinkingConfig": {"thinkingBudget": 0}}),
        ("developer and system messages", {"messages": [
            {"role": "developer", "content": [{"type": "text", "text": "A"}]},
            {"role": "system", "content": "B"}]},
         "systemInstruction", {"parts": [{"text": "A"}, {"text": "B"}]}),
        ("an http image", {"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://x.test/a.webp?s=1"}}]}]},
         "contents", [{"role": "user", "parts": [
             {"fileData": {"mimeType": "image/webp", "fileUri": "https://x.test/a.webp?s=1"}}]}]),
        ("audio", {"messages": [{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": "AAA=", "format": "mp3"}}]}]},
         "contents", [{"role": "user", "parts": [
             {"inlineData": {"mimeType": "audio/mp3", "data": "AAA="}}]}]),
    ]

    def test_cases(self) -> None:
        for name, chat, key, expected in self.CASES:
            with self.subTest(name):
                self.assertEqual(gemini.generate_request({"messages": [], **chat})[key],
                                 expected)

    def test_thought_signature_round_trip(self) -> None:
        """A call's thought signature rides in its id and goes back with the call."""
        signature = base64.b64encode(b"\xfb\xff signature bytes").decode()
        answer = {"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "f", "args": {"x": 1}}, "thoughtSignature": signature}]},
            "finishReason": "STOP"}]}
        completion, _ = gemini.chat_completion(answer, 0)
        call = completion["choices"][0]["message"]["tool_calls"][0]
        self.assertRegex(call["id"], r"^call_[0-9a-f]{24}_ts_[A-Za-z0-9_-]+$")
        request = gemini.generate_request({"messages": [
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": [
                {"type": "text", "text": "42"}]}]})
        self.assertEqual(request["contents"], [
            {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"x": 1}},
                                         "thoughtSignature": signature}]},
            {"role": "user", "parts": [{"functionResponse": {
                "name": "f", "response": {"content": "42"}}}]}])

    def test_embeddings(self) -> None:
        self.assertEqual(gemini.embed_request({"input": "hi", "dimensions": 8}, "e"),
                         ("embedContent", {"content": {"parts": [{"text": "hi"}]},
                                           "outputDimensionality": 8}))
        self.assertEqual(gemini.embed_request({"input": ["a", "b"]}, "e"), (
            "batchEmbedContents", {"requests": [
                {"model": "models/e", "content": {"parts": [{"text": "a"}]}},
                {"model": "models/e", "content": {"parts": [{"text": "b"}]}}]}))
        with self.assertRaises(Untranslatable):
            gemini.embed_request({"input": [[1, 2, 3]]}, "e")


class AnswerTests(TestCase):
    def test_usage(self) -> None:
        """Thoughts are output (OpenAI counts reasoning as completion); cache is input."""
        usage = gemini.usage_of({"promptTokenCount": 100, "candidatesTokenCount": 20,
                                 "thoughtsTokenCount": 30, "cachedContentTokenCount": 40,
                                 "toolUsePromptTokenCount": 5, "totalTokenCount": 155})
        self.assertEqual(usage, Usage(input_tokens=105, output_tokens=50,
                                      cached_input_tokens=40, reasoning_tokens=30))
        self.assertIsNone(gemini.usage_of(None))

    def test_finish_reasons(self) -> None:
        for reason, expected in [("STOP", "stop"), ("MAX_TOKENS", "length"),
                                 ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
                                 ("BLOCKLIST", "content_filter"), ("SPII", "content_filter"),
                                 ("PROHIBITED_CONTENT", "content_filter"), ("OTHER", "stop")]:
            answer = {"candidates": [{"content": {"parts": [{"text": "x"}]},
                                      "finishReason": reason}]}
            with self.subTest(reason):
                self.assertEqual(gemini.chat_completion(answer, 0)[0]["choices"][0]
                                 ["finish_reason"], expected)

    def test_candidates(self) -> None:
        answer = {"candidates": [
            {"index": 0, "content": {"parts": [{"text": "a"}]}, "finishReason": "STOP"},
            {"index": 1, "content": {"parts": [{"text": "b"}]}, "finishReason": "MAX_TOKENS"}]}
        choices = gemini.chat_completion(answer, 0)[0]["choices"]
        self.assertEqual([(c["index"], c["message"]["content"], c["finish_reason"])
                          for c in choices], [(0, "a", "stop"), (1, "b", "length")])

    def test_errors(self) -> None:
        body = orjson.dumps({"error": {"code": 429, "message": "Quota exceeded",
                                       "status": "RESOURCE_EXHAUSTED"}})
        self.assertEqual(orjson.loads(gemini.openai_error(429, body)), {"error": {
            "message": "Quota exceeded", "type": "rate_limit_error", "param": None,
            "code": "resource_exhausted"}})
        listed = orjson.dumps([{"error": {"code": 403, "message": "no",
                                          "status": "PERMISSION_DENIED"}}])
        self.assertEqual(gemini.error_of(listed), (403, "PERMISSION_DENIED", "no"))
        self.assertIsNone(gemini.openai_error(502, b"<html>bad gateway</html>"))

    def test_embeddings(self) -> None:
        batch, usage = gemini.embeddings({"embeddings": [{"values": [0.5]},
                                                         {"values": [0.25]}]}, "e")
        self.assertEqual(batch["data"], [
            {"object": "embedding", "index": 0, "embedding": [0.5]},
            {"object": "embedding", "index": 1, "embedding": [0.25]}])
        self.assertIsNone(usage)
        single, _ = gemini.embeddings({"embedding": {"values": [1.0, 2.0]}}, "e")
        self.assertEqual(single["data"][0]["embedding"], [1.0, 2.0])


def sse(*answers: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + orjson.dumps(answer) + b"\r\n\r\n" for answer in answers)


STREAM = sse(
    {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "Hmm.", "thought": True}]}}], "responseId": "r1", "modelVersion": "g"},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
     "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1}},
    {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "lo"}, {"functionCall": {"name": "f", "args": {"a": 1}}}]},
        "finishReason": "STOP"}],
     "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4,
                       "thoughtsTokenCount": 2}})


class StreamTests(TestCase):
    def test_byte_by_byte(self) -> None:
        """However the bytes are cut, the same chunks; usage is the last report."""
        translator = gemini.GeminiToChatStream(1, True)
        out = b"".join(translator.feed(STREAM[i:i + 1]) for i in range(len(STREAM)))
        chunks = _chunks(out + translator.finish())
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        self.assertEqual(deltas[0], {"role": "assistant", "content": ""})
        self.assertEqual(deltas[1], {"reasoning_content": "Hmm."})
        self.assertEqual("".join(d.get("content") or "" for d in deltas), "Hello")
        [call] = [c for d in deltas for c in d.get("tool_calls") or []]
        self.assertEqual((call["index"], call["function"]),
                         (0, {"name": "f", "arguments": '{"a":1}'}))
        self.assertTrue(call["id"].startswith("call_"))
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "tool_calls")
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 6)
        self.assertEqual({c["id"] for c in chunks}, {"chatcmpl-r1"})
        self.assertEqual(translator.usage, Usage(input_tokens=3, output_tokens=6,
                                                 reasoning_tokens=2))

    def test_error_mid_stream(self) -> None:
        translator = gemini.GeminiToChatStream(1, False)
        out = translator.feed(STREAM[:60] + STREAM[60:STREAM.index(b"\r\n\r\n") + 4] + sse(
            {"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}))
        self.assertEqual(translator.error, (503, "overloaded"))
        self.assertIn(b'"code":"unavailable"', out)
        self.assertEqual(translator.finish(), b"")

    def test_blocked_prompt(self) -> None:
        translator = gemini.GeminiToChatStream(1, False)
        chunks = _chunks(translator.feed(sse({"promptFeedback": {"blockReason": "SAFETY"}}))
                         + translator.finish())
        self.assertEqual(chunks[-1]["choices"][0]["finish_reason"], "content_filter")

    def test_chained_to_messages(self) -> None:
        """Gemini -> OpenAI chunks -> Messages events, as a Messages caller gets them."""
        chain = ChainedStream(gemini.GeminiToChatStream(1, True), ChatToMessagesStream("m"))
        out = chain.feed(STREAM) + chain.finish()
        names = [line[7:] for line in out.split(b"\n") if line.startswith(b"event: ")]
        self.assertEqual(names[0], b"message_start")
        self.assertEqual(names[-2:], [b"message_delta", b"message_stop"])
        self.assertIn(b'"stop_reason":"tool_use"', out)
        self.assertIn(b'"partial_json":"{\\"a\\":1}"', out)
        self.assertEqual(chain.usage.output_tokens, 6)
