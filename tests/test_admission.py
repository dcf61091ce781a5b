"""
The one admission step, as callers see it: a missing key said in each dialect's words (issue 18
item 8), refusals to a limited key that carry its ``x-ratelimit-*`` headers (issue 17 item 6),
and the Messages API's ``request-id`` the anthropic SDK reads (issue 18 item 6).
"""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import treq

from tests.gateway_harness import CONFIG, GatewayTestCase

LIMITED_KEY = "sk-gw-limitedKeyOfTheAdmissionTests01"
KEYED_CONFIG = (CONFIG.replace("models:\n", "keys:\n"
                               "  - name: limited\n"
                               f"    key: {LIMITED_KEY}\n"
                               '    models: ["demo", "claude-*", "nowhere-*"]\n'
                               "    requests_per_minute: 100\n"
                               "models:\n")
                .replace('  - name: "*"\n    provider: fake\n', ""))

MESSAGES = [{"role": "user", "content": "hi"}]


class AdmissionTests(GatewayTestCase):
    config = KEYED_CONFIG

    async def call(self, path: str, body: dict[str, Any],
                   headers: dict[bytes, list[bytes]]) -> tuple[Any, dict[str, Any]]:
        response = await treq.post(self.base_url + path, orjson.dumps(body), pool=self.pool,
                                   headers={b"content-type": [b"application/json"], **headers})
        return response, orjson.loads(await response.content())

    async def test_a_missing_key_is_said_missing_in_each_dialect(self) -> None:
        chat = {"model": "demo", "messages": MESSAGES}
        messages = {"model": "claude-x", "max_tokens": 5, "messages": MESSAGES}
        _, answer = await self.call("/v1/chat/completions", chat, {})
        self.assertTrue(answer["error"]["message"].startswith("You didn't provide an API key"))
        _, answer = await self.call("/v1/chat/completions", chat,
                                    {b"authorization": [b"Bearer sk-gw-nobodys"]})
        self.assertEqual(answer["error"]["message"], "Incorrect API key provided.")
        response, answer = await self.call("/v1/messages", messages, {})
        self.assertEqual((response.code, answer["error"]),
                         (401, {"type": "authentication_error",
                                "message": "x-api-key header is required"}))
        _, answer = await self.call("/v1/messages", messages, {b"x-api-key": [b"sk-nobodys"]})
        self.assertEqual(answer["error"]["message"], "invalid x-api-key")
        for path in ("/v1/files", "/v1/conversations/conv_x", "/v1/responses/resp_x"):
            response = await treq.get(self.base_url + path, pool=self.pool)
            answer = orjson.loads(await response.content())
            self.assertEqual(response.code, 401, path)
            self.assertTrue(answer["error"]["message"].startswith("You didn't provide"), path)

    async def test_refusals_to_a_limited_key_carry_its_rate_limit_headers(self) -> None:
        key = {b"authorization": [b"Bearer " + LIMITED_KEY.encode()]}
        answers = [await self.call("/v1/chat/completions", {"model": model, "messages": MESSAGES},
                                   key)
                   for model in ("demo", "gpt-not-allowed", "nowhere-routed")]
        self.assertEqual([response.code for response, _ in answers], [200, 403, 404])
        remaining = [response.headers.getRawHeaders(b"x-ratelimit-remaining-requests")
                     for response, _ in answers]
        self.assertEqual(remaining, [[b"99"], [b"98"], [b"97"]])
        for response, _ in answers:
            self.assertEqual(response.headers.getRawHeaders(b"x-ratelimit-limit-requests"),
                             [b"100"])

    async def test_messages_answers_carry_anthropics_request_id(self) -> None:
        client = anthropic.Anthropic(base_url=self.base_url, api_key=LIMITED_KEY,
                                     max_retries=0, timeout=10)
        self.addCleanup(client.close)
        answer = await self.sdk(client.messages.create, model="claude-x", max_tokens=5,
                                messages=MESSAGES)
        [record] = self.access_records()
        self.assertTrue(answer._request_id.startswith("req_"))
        self.assertEqual(answer._request_id, record["request_id"])
