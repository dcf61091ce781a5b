"""
Malformed bodies against a running gateway (issue 19's fuzz): each gets a 4xx in the caller's
dialect, never a 500 or a traceback in the log (trial fails a test that logs an error).
"""

from __future__ import annotations

import http.client
import os
from typing import Any

import orjson
import treq
from hypothesis import HealthCheck, Phase, given, settings
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.fuzz_bodies import (
    CHAT,
    KEY,
    MESSAGES,
    RESPONSES,
    check_anthropic_error,
    check_openai_error,
    mutations,
)
from tests.gateway_harness import GatewayTestCase
from tests.test_keys import ADMIN, KEYS_CONFIG, TEAM_KEY

#: Cases per endpoint; FUZZ_CASES raises it for a longer hunt.
CASES = int(os.environ.get("FUZZ_CASES", "60"))

ENDPOINTS = {
    "/v1/messages": (mutations(MESSAGES, ["demo"]), check_anthropic_error),
    "/v1/messages/count_tokens": (
        mutations({k: v for k, v in MESSAGES.items() if k != "max_tokens"}, ["demo"]),
        check_anthropic_error),
    "/v1/responses": (mutations(RESPONSES, ["demo", "claude-x"]),
                      check_openai_error),
    # (Not to the fake OpenAI upstream: it fails on bodies a real one refuses, a 502 here.)
    "/v1/chat/completions": (mutations(CHAT, ["demo", "claude-x"]), check_openai_error),
}


def post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("POST", path, body, {"content-type": "application/json",
                                                **headers})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def hunt(port: int, path: str, strategy: Any, check: Any, headers: dict[str, str],
         cases: int) -> list[tuple[bytes, str]]:
    """Every body ``strategy`` draws that gets a wrong answer, with what was wrong."""
    found: list[tuple[bytes, str]] = []

    @settings(max_examples=cases, phases=[Phase.generate], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def probe(body: bytes) -> None:
        status, answer = post(port, path, body, headers)
        problem = check(status, answer)
        if problem is not None:
            found.append((body, problem))

    probe()
    return found


class FuzzedBodies(GatewayTestCase):
    timeout = 600

    async def check_endpoint(self, path: str) -> None:
        strategy, check = ENDPOINTS[path]
        port = int(self.base_url.rsplit(":", 1)[1])
        found = await deferToThread(hunt, port, path, strategy, check,
                                    {"x-api-key": "sk-caller", "authorization": "Bearer x"},
                                    CASES)
        # An upstream body's stall timer may outlive its answer by up to the idle timeout.
        await deferLater(reactor, 0.6)
        self.assertEqual([(body[:300], problem) for body, problem in found], [])

    async def test_messages(self) -> None:
        await self.check_endpoint("/v1/messages")

    async def test_count_tokens(self) -> None:
        await self.check_endpoint("/v1/messages/count_tokens")

    async def test_responses(self) -> None:
        await self.check_endpoint("/v1/responses")

    async def test_chat_completions(self) -> None:
        await self.check_endpoint("/v1/chat/completions")


class FuzzedAdminKeys(GatewayTestCase):
    config = KEYS_CONFIG
    timeout = 600

    async def test_admin_keys(self) -> None:
        port = int(self.base_url.rsplit(":", 1)[1])
        found = await deferToThread(hunt, port, "/admin/keys", mutations(KEY, []),
                                    check_openai_error, {"authorization": f"Bearer {ADMIN}"},
                                    CASES)
        self.assertEqual([(body[:300], problem) for body, problem in found], [])




class FoundByTheFuzz(GatewayTestCase):
    """The bodies that got a 500 before, each a 400 naming the field now."""

    config = KEYS_CONFIG

    async def answer(self, path: str, body: Any, **headers: str) -> tuple[int, Any]:
        response = await treq.post(
            self.base_url + path, body if isinstance(body, bytes) else orjson.dumps(body),
            pool=self.pool, headers={"content-type": "application/json", **headers})
        return response.code, orjson.loads(await response.content())

    async def anthropic_error(self, path: str, body: Any) -> str:
        status, answer = await self.answer(path, body, **{"x-api-key": TEAM_KEY})
        self.assertEqual((status, answer["type"], answer["error"]["type"]),
                         (400, "error", "invalid_request_error"))
        return answer["error"]["message"]

    async def openai_param(self, body: Any) -> str:
        status, answer = await self.answer("/v1/responses", body,
                                           authorization=f"Bearer {TEAM_KEY}")
        self.assertEqual((status, answer["error"]["type"]), (400, "invalid_request_error"))
        return answer["error"]["param"]

    async def test_messages(self) -> None:
        def with_content(content: Any) -> dict[str, Any]:
            return {"model": "demo", "max_tokens": 5,
                    "messages": [{"role": "user", "content": content}]}

        self.assertEqual(await self.anthropic_error("/v1/messages", with_content(
            [{"type": "text", "text": ["Hi"]}])),
            "messages.0.content.0.text: Input should be a valid string")
        self.assertEqual(await self.anthropic_error("/v1/messages", with_content([["Hi"]])),
                         "messages.0.content.0: Input should be a valid dictionary")
        self.assertEqual(await self.anthropic_error(
            "/v1/messages", {**with_content("Hi"), "thinking": {"type": "enabled",
                                                                 "budget_tokens": {}}}),
            "thinking.budget_tokens: Input should be a valid integer")
        self.assertEqual(await self.anthropic_error(
            "/v1/messages/count_tokens", {"model": "demo", "messages": [], "tools": {}}),
            "tools: Input should be a valid list")

    async def test_responses(self) -> None:
        call = {"type": "function_call", "call_id": "c1", "name": ["f"], "arguments": "{}"}
        self.assertEqual(await self.openai_param({"model": "demo", "input": [call]}),
                         "input[0].name")
        output = {"type": "function_call_output", "call_id": "c1", "output": {"x": 1}}
        self.assertEqual(await self.openai_param({"model": "claude-x", "input": [output]}),
                         "input[0].output")
        # Items that are not objects are refused on the native path too, streamed or not.
        self.assertEqual(await self.openai_param({"model": "gpt-4o", "input": [[]],
                                                  "stream": True}), "input[0]")

    async def test_chat_translated_to_messages(self) -> None:
        """Chat bodies that a translation to Anthropic read as they were: a 500 before."""
        chat = {"model": "claude-x", "messages": [{"role": "user", "content": "Hi"}]}
        cases = [
            ({"messages": [{"role": "user", "content": "Hi"}, None]}, "messages[1]"),
            ({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": {"x": 1}}}]}]},
             "messages[0].content[0].image_url.url"),
            ({"reasoning_effort": ["low"]}, "reasoning_effort"),
            ({"tools": [{"type": "function"}]}, "tools[0].function"),
            ({"tool_choice": {"type": "function"}}, "tool_choice.function"),
        ]
        for change, param in cases:
            status, answer = await self.answer("/v1/chat/completions", {**chat, **change},
                                               authorization=f"Bearer {TEAM_KEY}")
            self.assertEqual((status, answer["error"]["type"], answer["error"]["param"]),
                             (400, "invalid_request_error", param))
        self.assertEqual(self.claude.requests, [])

    async def test_deep_nesting(self) -> None:
        deep = b'{"a": [' * 200 + b"1" + b"]}" * 200
        body = b'{"model": "demo", "input": "Hi", "metadata": ' + deep + b"}"
        status, answer = await self.answer("/v1/responses", body,
                                           authorization=f"Bearer {TEAM_KEY}")
        self.assertEqual(status, 400)
        self.assertIn("levels deep", answer["error"]["message"])

    async def test_admin_key_limits(self) -> None:
        for limit in (2 ** 63, -1):
            status, answer = await self.answer("/admin/keys", {"requests_per_minute": limit},
                                               authorization=f"Bearer {ADMIN}")
            self.assertEqual((status, answer["error"]["code"]), (400, "invalid_key_fields"))
            self.assertIn("requests_per_minute", answer["error"]["message"])
