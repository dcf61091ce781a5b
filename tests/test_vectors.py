"""
Table-driven translation tests for Bedrock, Cohere, OpenAI and the Responses API on
agentgateway's published vectors (`tests.vectors`).  Each table names the cases; where our
output differs from that project's on purpose, the normalisation says why.
"""

from __future__ import annotations

import unittest
from typing import Any

import orjson

from tests.vectors import needs_vectors, snapshot, vector, without_nulls
from txgateway.dialects.cohere import completed_answer, parse_rerank, upstream_rerank_body
from txgateway.dialects.openai import loads_object, parse_chat, upstream_chat_body
from txgateway.dialects.openai_rest import usage_of
from txgateway.plugins.bedrock.converse import (
    chat_completion,
    converse_request,
    embeddings_request,
)
from txgateway.translate import rerank
from txgateway.translate.responses_to_chat import chat_request, response_from_chat
from txgateway.usage import Usage

#: agentgateway's own defaults and choices, not the caller's: left out of its requests.
DUMMY_TOOL = {"tools": [{"toolSpec": {"name": "agentgateway_dummy_do_not_call",
                                      "inputSchema": {"json": {"type": "object"}}}}]}


def their_converse(request: dict[str, Any], caller: dict[str, Any]) -> dict[str, Any]:
    """agentgateway's Converse request, less what is its own choice rather than the caller's."""
    request = without_nulls(request)
    if "max_tokens" not in caller and "max_completion_tokens" not in caller:
        request.get("inferenceConfig", {}).pop("maxTokens", None)  # its default of 4096
    if request.get("toolConfig") == DUMMY_TOOL:  # sent when the history holds tool calls
        del request["toolConfig"]
    tool_config = request.get("toolConfig", {})
    if "tool_choice" in tool_config:  # its serialisation; the Converse API says toolChoice
        tool_config["toolChoice"] = tool_config.pop("tool_choice")
    # Not translated by us (yet): response_format to outputConfig, reasoning_effort to a
    # thinking budget.  The caller gets the answer without them rather than an error.
    request.pop("outputConfig", None)
    request.pop("additionalModelRequestFields", None)
    return {key: value for key, value in request.items() if value != {}}


@needs_vectors
class BedrockVectors(unittest.TestCase):
    def test_chat_requests(self) -> None:
        for case in ("basic", "full", "tool-call", "reasoning", "parallel-tool-call"):
            with self.subTest(case):
                chat = orjson.loads(vector(f"requests/completions/{case}.json"))
                expected = snapshot(f"requests/completions/{case}.bedrock.snap")["request"]
                self.assertEqual(converse_request(chat), their_converse(expected, chat))

    def test_responses_requests(self) -> None:
        """Responses requests reach Bedrock through the chat shape."""
        for case in ("basic", "input-list", "instructions", "parallel-tool-call"):
            with self.subTest(case):
                request = orjson.loads(vector(f"requests/responses/{case}.json"))
                expected = snapshot(f"requests/responses/{case}.bedrock.snap")["request"]
                chat = chat_request(request, [], request["model"])
                got = converse_request(chat)
                want = their_converse(expected, request)
                self.assertEqual(got["messages"], want["messages"])
                self.assertEqual(got.get("system"), want.get("system"))

    def test_chat_answers(self) -> None:
        """
        Text, tool calls, reasoning and finish reasons as theirs.  Their ``prompt_tokens`` is
        Converse's cache-exclusive ``inputTokens``; ours counts cache reads and writes too,
        as OpenAI's does.  The reasoning signature has nowhere to go in a chat message.
        """
        for case in ("basic", "tool", "reasoning", "reasoning_unsigned", "cache_write"):
            with self.subTest(case):
                answer = orjson.loads(vector(f"response/bedrock/{case}.json"))
                expected = snapshot(f"response/bedrock/{case}.bedrock-completions.snap")
                completion, usage = chat_completion(answer, 0)
                [choice] = completion["choices"]
                [want] = expected["response"]["choices"]
                want["message"].pop("reasoning_signature", None)
                self.assertEqual(without_nulls(choice["message"]), want["message"])
                self.assertEqual(choice["finish_reason"], want["finish_reason"])
                reported = answer.get("usage")
                if reported is None:
                    self.assertIsNone(usage)
                    continue
                self.assertEqual(usage.output_tokens, reported["outputTokens"])
                self.assertEqual(usage.input_tokens, reported["inputTokens"]
                                 + reported.get("cacheReadInputTokens", 0)
                                 + reported.get("cacheWriteInputTokens", 0))
                self.assertEqual(usage.cache_creation_tokens,
                                 reported.get("cacheWriteInputTokens", 0))

    def test_answers_to_responses_callers(self) -> None:
        """
        Bedrock's answers given to a Responses caller through the chat shape: output items
        and status as theirs.  Theirs puts the reasoning text in the message as one more
        ``output_text``, which we leave out of the answer; an answer cut short is incomplete
        for ``max_output_tokens``, the reason OpenAI's API gives (theirs says ``max_tokens``).
        """
        for case in ("basic", "tool", "reasoning", "max_tokens", "cache_write"):
            with self.subTest(case):
                completion, _ = chat_completion(
                    orjson.loads(vector(f"response/bedrock/{case}.json")), 0)
                got, _ = response_from_chat({"model": "m"}, completion, "resp_1", "m")
                want = snapshot(f"response/bedrock/{case}.bedrock-responses.snap")["response"]
                if case == "reasoning":
                    del want["output"][0]["content"][0]
                self.assertEqual(got["status"], want["status"])
                self.assertEqual(_items(got["output"]), _items(want["output"]))
                if want.get("incomplete_details"):
                    self.assertEqual(got["incomplete_details"], {"reason": "max_output_tokens"})

    def test_embeddings_requests(self) -> None:
        """Titan's as theirs; Cohere's ``input_type`` is ours, ``search_document`` (an
        OpenAI caller embeds what it stores as often as what it asks)."""
        for case, kind, model in (("basic", "bedrock-titan", "amazon.titan-embed-text-v2:0"),
                                  ("basic", "bedrock-cohere", "cohere.embed-english-v3"),
                                  ("array", "bedrock-cohere", "cohere.embed-english-v3"),
                                  ("cohere-v4", "bedrock-cohere", "cohere.embed-v4:0")):
            with self.subTest(f"{case} {kind}"):
                request = orjson.loads(vector(f"requests/embeddings/{case}.json"))
                expected = snapshot(f"requests/embeddings/{case}.{kind}.snap")["request"]
                if "input_type" in expected:
                    expected["input_type"] = "search_document"
                self.assertEqual(embeddings_request(request, model), expected)


def _items(output: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """A Responses output as what the caller reads of it (ids are each side's own)."""
    return [("message", [part["text"] for part in item["content"]]) if item["type"] == "message"
            else (item["type"], item["call_id"], item["name"], item["arguments"])
            for item in output]


def _their_model_arn(request: dict[str, Any]) -> str:
    return request["rerankingConfiguration"]["bedrockRerankingConfiguration"][
        "modelConfiguration"]["modelArn"]


@needs_vectors
class RerankVectors(unittest.TestCase):
    """Cohere's v2 rerank, to Cohere itself, Bedrock's Rerank and Vertex AI's ranking API."""

    cases = ("basic", "passthrough-fields")

    def test_to_cohere(self) -> None:
        """Object documents go as strings: v2 takes strings only."""
        for case in self.cases:
            with self.subTest(case):
                request = parse_rerank(vector(f"requests/rerank/{case}.json"))
                expected = snapshot(f"requests/rerank/{case}.cohere.snap")["request"]
                expected["documents"] = [document if isinstance(document, str)
                                         else document["text"]
                                         for document in expected["documents"]]
                got = orjson.loads(upstream_rerank_body(request, request.model))
                self.assertEqual(got, expected)

    def test_to_bedrock_and_vertex(self) -> None:
        """The model ARN is the caller's model as a foundation model (theirs maps names)."""
        for case in self.cases:
            with self.subTest(case):
                request = orjson.loads(vector(f"requests/rerank/{case}.json"))
                bedrock = without_nulls(snapshot(f"requests/rerank/{case}.bedrock.snap")[
                    "request"])
                self.assertEqual(rerank.bedrock_request(request, _their_model_arn(bedrock)),
                                 bedrock)
                vertex = snapshot(f"requests/rerank/{case}.vertex.snap")["request"]
                self.assertEqual(rerank.vertex_request(request, vertex["model"]), vertex)

    def test_answers(self) -> None:
        request = parse_rerank(vector("requests/rerank/basic.json"))
        for translate, path in ((rerank.bedrock_answer, "response/bedrock/rerank"),
                                (rerank.vertex_answer, "response/vertex/rerank")):
            with self.subTest(path):
                expected = snapshot(f"{path}.{path.split('/')[1]}.snap")["response"]
                answer = translate(orjson.loads(vector(f"{path}.json")))
                self.assertEqual(answer["results"], expected["results"])
                completed = completed_answer(answer, request)
                self.assertEqual(completed["meta"]["billed_units"], {"search_units": 1})
        answer = orjson.loads(vector("response/cohere/rerank.json"))
        expected = snapshot("response/cohere/rerank.cohere.snap")["response"]
        self.assertEqual(answer["results"], expected["results"])  # relayed as it came


@needs_vectors
class OpenAIVectors(unittest.TestCase):
    """The same-dialect fast path: the body goes as it came, usage read on the side."""

    def test_chat_requests_unchanged(self) -> None:
        for case in ("basic", "full", "tool-call", "reasoning"):
            with self.subTest(case):
                raw = vector(f"requests/completions/{case}.json")
                chat = parse_chat(raw)
                self.assertEqual(orjson.loads(upstream_chat_body(chat, chat.model)),
                                 orjson.loads(raw))

    def test_usage_of_answers(self) -> None:
        for case in ("basic", "tool_call", "cache_write", "audio"):
            with self.subTest(case):
                body = vector(f"response/completions/{case}.json")
                expected = snapshot(f"response/completions/{case}.completions-completions"
                                    ".snap")["response"]["usage"]
                usage = Usage.from_openai(loads_object(body)["usage"])
                self.assertEqual(usage, Usage.from_openai(expected))
                self.assertEqual(usage.output_tokens, expected["completion_tokens"])
                self.assertEqual(usage.input_tokens, expected["prompt_tokens"])

    def test_embeddings_usage(self) -> None:
        body = vector("response/openai/embeddings.json")
        expected = snapshot("response/openai/embeddings.openai.snap")["response"]
        self.assertEqual(orjson.loads(body), expected)
        self.assertEqual(usage_of(loads_object(body)["usage"]), Usage(input_tokens=8))
