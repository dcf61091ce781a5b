"""OpenAI chat and embeddings to Bedrock Converse / invoke and back, case by case."""

from __future__ import annotations

from typing import Any

import orjson
from twisted.trial.unittest import SynchronousTestCase

from tests.fake_bedrock import event, exception, frame
from txgateway.plugins.bedrock.converse import (
    ConverseStreamToChat,
    chat_completion,
    converse_request,
    embeddings_request,
    embeddings_response,
    error_message,
)
from txgateway.translate import Untranslatable
from txgateway.usage import Usage

PNG = "data:image/png;base64,iVBORw0KGgo="
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
WEATHER_SPEC = {"toolSpec": {"name": "get_weather", "description": "Weather in a city",
                             "inputSchema": {"json": WEATHER["function"]["parameters"]}}}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}

#: (what it shows, chat request, Converse request)
REQUESTS: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("plain text", {"messages": [{"role": "user", "content": "Hi"}]},
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}]}),
    ("system and developer become system blocks",
     {"messages": [{"role": "system", "content": "Be brief."},
                   {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                   {"role": "user", "content": "Hi"}]},
     {"system": [{"text": "Be brief."}, {"text": "No emoji."}],
      "messages": [{"role": "user", "content": [{"text": "Hi"}]}]}),
    ("consecutive same-role turns merged",
     {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                   {"role": "assistant", "content": "c"},
                   {"role": "assistant", "content": "d"}]},
     {"messages": [{"role": "user", "content": [{"text": "a"}, {"text": "b"}]},
                   {"role": "assistant", "content": [{"text": "c"}, {"text": "d"}]}]}),
    ("images from data URLs, blank text dropped",
     {"messages": [{"role": "user", "content": [
         {"type": "text", "text": ""}, {"type": "text", "text": "What is it?"},
         {"type": "image_url", "image_url": {"url": PNG}},
         {"type": "image_url", "image_url": {"url": "data:image/JPEG;base64,/9j/"}}]}]},
     {"messages": [{"role": "user", "content": [
         {"text": "What is it?"},
         {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
         {"image": {"format": "jpeg", "source": {"bytes": "/9j/"}}}]}]}),
    ("tool calls and results, results merged into one user turn with the next question",
     {"messages": [{"role": "user", "content": "Weather?"},
                   {"role": "assistant", "content": None, "tool_calls": [
                       CALL, {**CALL, "id": "call_2", "function": {"name": "get_weather",
                                                                  "arguments": ""}}]},
                   {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
                   {"role": "tool", "tool_call_id": "call_2",
                    "content": [{"type": "text", "text": "Rain"}]},
                   {"role": "user", "content": "Thanks"}],
      "tools": [WEATHER]},
     {"messages": [
         {"role": "user", "content": [{"text": "Weather?"}]},
         {"role": "assistant", "content": [
             {"toolUse": {"toolUseId": "call_1", "name": "get_weather",
                          "input": {"city": "Paris"}}},
             {"toolUse": {"toolUseId": "call_2", "name": "get_weather", "input": {}}}]},
         {"role": "user", "content": [
             {"toolResult": {"toolUseId": "call_1", "content": [{"text": "Sunny"}]}},
             {"toolResult": {"toolUseId": "call_2", "content": [{"text": "Rain"}]}},
             {"text": "Thanks"}]}],
      "toolConfig": {"tools": [WEATHER_SPEC]}}),
    ("inference parameters",
     {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 50,
      "max_completion_tokens": 99, "temperature": 0, "top_p": 0.9, "stop": "END"},
     {"messages": [{"role": "user", "content": [{"text": "Hi"}]}],
      "inferenceConfig": {"maxTokens": 99, "temperature": 0, "topP": 0.9,
                          "stopSequences": ["END"]}}),
    ("tool choice required",
     {"messages": [], "tools": [WEATHER], "tool_choice": "required"},
     {"messages": [], "toolConfig": {"tools": [WEATHER_SPEC], "toolChoice": {"any": {}}}}),
    ("tool choice auto",
     {"messages": [], "tools": [WEATHER], "tool_choice": "auto"},
     {"messages": [], "toolConfig": {"tools": [WEATHER_SPEC], "toolChoice": {"auto": {}}}}),
    ("tool choice by name, a tool without parameters",
     {"messages": [], "tools": [WEATHER, {"type": "function", "function": {"name": "now"}}],
      "tool_choice": {"type": "function", "function": {"name": "now"}}},
     {"messages": [], "toolConfig": {"tools": [WEATHER_SPEC, {"toolSpec": {
         "name": "now", "inputSchema": {"json": {"type": "object", "properties": {}}}}}],
         "toolChoice": {"tool": {"name": "now"}}}}),
    ("tool choice none: no tools", {"messages": [], "tools": [WEATHER], "tool_choice": "none"},
     {"messages": []}),
    ("tool choice none with tool blocks: the tools stay, no choice",
     {"messages": [{"role": "assistant", "tool_calls": [CALL]}], "tools": [WEATHER],
      "tool_choice": "none"},
     {"messages": [{"role": "assistant", "content": [{"toolUse": {
         "toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}]}],
      "toolConfig": {"tools": [WEATHER_SPEC]}}),
]


class ConverseRequestTests(SynchronousTestCase):
    def test_requests(self) -> None:
        for name, chat, converse in REQUESTS:
            self.assertEqual(converse_request(chat), converse, name)

    def test_untranslatable_images(self) -> None:
        for url, problem in (("https://example.com/cat.png", "data URLs"),
                             ("data:image/tiff;base64,AAAA", "image/tiff")):
            with self.assertRaises(Untranslatable) as raised:
                converse_request({"messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": url}}]}]})
            self.assertIn(problem, str(raised.exception))
            self.assertEqual(raised.exception.status, 400)


def answer(content: list[dict[str, Any]], stop: str, usage: Any = None) -> dict[str, Any]:
    return {"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 3}}


class ChatCompletionTests(SynchronousTestCase):
    def test_finish_reasons(self) -> None:
        for stop, finish in (("end_turn", "stop"), ("stop_sequence", "stop"),
                             ("max_tokens", "length"), ("tool_use", "tool_calls"),
                             ("guardrail_intervened", "content_filter"),
                             ("content_filtered", "content_filter"), ("new_reason", "stop")):
            completion, _ = chat_completion(answer([{"text": "x"}], stop), 1)
            self.assertEqual(completion["choices"][0]["finish_reason"], finish, stop)

    def test_usage_counts_cache_in_prompt(self) -> None:
        """inputTokens leaves the cache out; prompt_tokens puts it back."""
        completion, usage = chat_completion(answer([{"text": "x"}], "end_turn", {
            "inputTokens": 20, "outputTokens": 9, "totalTokens": 41,
            "cacheReadInputTokens": 7, "cacheWriteInputTokens": 5}), 1)
        self.assertEqual(usage, Usage(input_tokens=32, output_tokens=9, cached_input_tokens=7,
                                      cache_creation_tokens=5))
        self.assertEqual({k: completion["usage"][k] for k in ("prompt_tokens",
                                                               "completion_tokens",
                                                               "total_tokens")},
                         {"prompt_tokens": 32, "completion_tokens": 9, "total_tokens": 41})
        self.assertEqual(completion["usage"]["prompt_tokens_details"],
                         {"cached_tokens": 7, "cache_write_tokens": 5})
        self.assertEqual(chat_completion(answer([], "end_turn", {"inputTokens": 3}), 1)[1],
                         None)

    def test_content(self) -> None:
        completion, _ = chat_completion(answer([
            {"reasoningContent": {"reasoningText": {"text": "Hmm.", "signature": "s"}}},
            {"text": "Let me check. "}, {"text": "Done."},
            {"toolUse": {"toolUseId": "t1", "name": "get_weather", "input": {"city": "P"}}}],
            "tool_use"), 7)
        self.assertTrue(completion["id"].startswith("chatcmpl-"))
        self.assertEqual((completion["object"], completion["created"]), ("chat.completion", 7))
        self.assertEqual(completion["choices"][0]["message"], {
            "role": "assistant", "content": "Let me check. Done.", "refusal": None,
            "reasoning_content": "Hmm.",
            "tool_calls": [{"id": "t1", "type": "function", "function": {
                "name": "get_weather", "arguments": '{"city":"P"}'}}]})

    def test_error_message(self) -> None:
        for body, expected in ((b'{"message": "Bad input"}', ("Bad input", None)),
                               (b'{"Message": "Denied"}', ("Denied", None)),
                               (b'{"__type": "com.amazon#ThrottlingException:http://x", '
                                b'"message": "Slow down"}', ("Slow down", "ThrottlingException")),
                               (b"<html>", None), (b"[1]", None), (b'{"error": 1}', None)):
            self.assertEqual(error_message(body), expected, body)


def translate(*frames: bytes, wants_usage: bool = True) -> tuple[list[Any], Any]:
    """The chunks (parsed; "[DONE]" as is) of a stream fed in one piece, and the translator."""
    translator = ConverseStreamToChat(5, wants_usage)
    out = translator.feed(b"".join(frames)) + translator.finish()
    chunks = [payload if payload == b"[DONE]" else orjson.loads(payload)
              for payload in (event_[6:] for event_ in out.split(b"\n\n") if event_)]
    return chunks, translator


STREAM_USAGE = {"inputTokens": 2, "outputTokens": 3, "totalTokens": 9,
                "cacheReadInputTokens": 4}


class ConverseStreamTests(SynchronousTestCase):
    def test_text_and_usage(self) -> None:
        chunks, translator = translate(
            event("messageStart", {"role": "assistant"}),
            event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
            event("contentBlockStop", {"contentBlockIndex": 0}),
            event("messageStop", {"stopReason": "max_tokens"}),
            event("metadata", {"usage": STREAM_USAGE, "metrics": {"latencyMs": 1}}))
        deltas = [chunk["choices"][0]["delta"] for chunk in chunks[:2]]
        self.assertEqual(deltas, [{"role": "assistant", "content": ""}, {"content": "Hi"}])
        self.assertEqual(chunks[2]["choices"][0]["finish_reason"], "length")
        self.assertEqual((chunks[3]["choices"], chunks[3]["usage"]["prompt_tokens"]), ([], 6))
        self.assertEqual(chunks[4], b"[DONE]")
        self.assertEqual(len({chunk["id"] for chunk in chunks[:4]}), 1)
        self.assertEqual(translator.usage, Usage(input_tokens=6, output_tokens=3,
                                                 cached_input_tokens=4))
        self.assertIsNone(translator.error)

    def test_usage_chunk_only_when_asked(self) -> None:
        chunks, translator = translate(
            event("messageStart", {"role": "assistant"}),
            event("messageStop", {"stopReason": "end_turn"}),
            event("metadata", {"usage": STREAM_USAGE}), wants_usage=False)
        self.assertEqual(len(chunks), 3)
        self.assertEqual(chunks[-1], b"[DONE]")
        self.assertIsNotNone(translator.usage)

    def test_tool_calls(self) -> None:
        """Stable indexes; a call without argument fragments gets "{}"."""
        chunks, _ = translate(
            event("messageStart", {"role": "assistant"}),
            event("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {
                "toolUseId": "t1", "name": "get_weather"}}}),
            event("contentBlockDelta", {"contentBlockIndex": 1,
                                        "delta": {"toolUse": {"input": '{"ci'}}}),
            event("contentBlockDelta", {"contentBlockIndex": 1,
                                        "delta": {"toolUse": {"input": 'ty": "P"}'}}}),
            event("contentBlockStop", {"contentBlockIndex": 1}),
            event("contentBlockStart", {"contentBlockIndex": 2, "start": {"toolUse": {
                "toolUseId": "t2", "name": "now"}}}),
            event("contentBlockStop", {"contentBlockIndex": 2}),
            event("messageStop", {"stopReason": "tool_use"}))
        calls = [call for chunk in chunks if isinstance(chunk, dict)
                 for call in chunk["choices"][0]["delta"].get("tool_calls", [])]
        self.assertEqual(calls, [
            {"index": 0, "id": "t1", "type": "function",
             "function": {"name": "get_weather", "arguments": ""}},
            {"index": 0, "function": {"arguments": '{"ci'}},
            {"index": 0, "function": {"arguments": 'ty": "P"}'}},
            {"index": 1, "id": "t2", "type": "function",
             "function": {"name": "now", "arguments": ""}},
            {"index": 1, "function": {"arguments": "{}"}}])
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "tool_calls")
        self.assertEqual(chunks[-1], b"[DONE]", "a stream cut before metadata still ends")

    def test_reasoning(self) -> None:
        chunks, _ = translate(event("contentBlockDelta", {
            "contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Hmm"}}}))
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"reasoning_content": "Hmm"})

    def test_exception_frames(self) -> None:
        for kind, status in (("throttlingException", 429), ("validationException", 400),
                             ("modelStreamErrorException", 424),
                             ("serviceUnavailableException", 503),
                             ("internalServerException", 500), ("somethingNew", 502)):
            chunks, translator = translate(
                event("messageStart", {"role": "assistant"}), exception(kind, "It broke"),
                event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}}))
            self.assertEqual(translator.error, (status, "It broke"), kind)
            self.assertEqual(chunks[-1]["error"]["message"], "It broke")
            self.assertEqual(chunks[-1]["error"]["code"], kind)
            self.assertEqual(len(chunks), 2, "nothing after the error")

    def test_error_message_frame(self) -> None:
        chunks, translator = translate(frame({":message-type": "error",
                                              ":error-code": "InternalFailure",
                                              ":error-message": "Oops"}, b""))
        self.assertEqual(translator.error, (502, "Oops"))
        self.assertEqual(chunks[0]["error"]["code"], "InternalFailure")

    def test_corrupt_frame(self) -> None:
        good = event("messageStart", {"role": "assistant"})
        bad = bytearray(event("contentBlockDelta", {"contentBlockIndex": 0,
                                                    "delta": {"text": "x"}}))
        bad[-5] ^= 1
        translator = ConverseStreamToChat(5, True)
        out = translator.feed(good + bytes(bad))
        self.assertEqual(translator.error[0], 502)
        self.assertIn(b'"role":"assistant"', out)
        self.assertIn(b"event stream is corrupt", out)
        self.assertEqual(translator.feed(good), b"")
        self.assertEqual(translator.finish(), b"")


class EmbeddingsTests(SynchronousTestCase):
    def test_requests(self) -> None:
        for model, request, body in (
                ("amazon.titan-embed-text-v2:0", {"input": "hello", "dimensions": 256},
                 {"inputText": "hello", "dimensions": 256}),
                ("amazon.titan-embed-text-v1", {"input": ["hello"]}, {"inputText": "hello"}),
                ("cohere.embed-english-v3", {"input": ["a", "b"]},
                 {"texts": ["a", "b"], "input_type": "search_document"}),
                ("us.cohere.embed-v4:0", {"input": "a"},
                 {"texts": ["a"], "input_type": "search_document"})):
            self.assertEqual(embeddings_request(request, model), body, model)

    def test_untranslatable(self) -> None:
        for model, request, problem in (
                ("amazon.titan-embed-text-v2:0", {"input": ["a", "b"]}, "one input"),
                ("cohere.embed-english-v3", {"input": [[1, 2, 3]]}, "token arrays"),
                ("amazon.titan-embed-text-v2:0", {"input": []}, "token arrays"),
                ("anthropic.claude-v2", {"input": "a"}, "not a Bedrock embedding model")):
            with self.assertRaises(Untranslatable) as raised:
                embeddings_request(request, model)
            self.assertIn(problem, str(raised.exception), model)

    def test_titan_response(self) -> None:
        response, usage = embeddings_response(
            {"embedding": [0.5, 0.25], "inputTextTokenCount": 4})
        self.assertEqual(response, {
            "object": "list", "model": "",
            "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
            "usage": {"prompt_tokens": 4, "total_tokens": 4}})
        self.assertEqual(usage, Usage(input_tokens=4))

    def test_cohere_response(self) -> None:
        """Cohere's body has no token count: the usage is estimated from the texts."""
        for embeddings in ([[1.0], [2.0]], {"float": [[1.0], [2.0]]}):
            response, usage = embeddings_response(
                {"id": "x", "embeddings": embeddings, "texts": ["abcd", "efgh"],
                 "response_type": "embeddings_floats"})
            self.assertEqual([d["embedding"] for d in response["data"]], [[1.0], [2.0]])
            self.assertEqual([d["index"] for d in response["data"]], [0, 1])
            self.assertEqual(usage, Usage(input_tokens=2, estimated=True))
