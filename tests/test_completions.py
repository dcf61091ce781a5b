"""End to end: legacy ``/v1/completions`` through the gateway, with the openai SDK."""

from __future__ import annotations

import orjson

from tests.fake_openai_rest import COMPLETION_TEXT, COMPLETION_USAGE
from tests.gateway_harness import GatewayTestCase


class CompletionsTests(GatewayTestCase):
    async def test_completion(self) -> None:
        """The answer comes back as the upstream wrote it; the body went as the caller sent it."""
        answer = await self.sdk(self.client.completions.create, model="gpt-3.5-turbo-instruct",
                                prompt="Tell me a story", max_tokens=8)
        self.assertEqual(answer.choices[0].text, "".join(COMPLETION_TEXT))
        self.assertEqual(answer.usage.prompt_tokens, COMPLETION_USAGE["prompt_tokens"])
        path, headers, body = self.fake.requests[0]
        self.assertEqual(path, b"/v1/completions")
        self.assertEqual(headers[b"Authorization"], [b"Bearer sk-upstream-secret"])
        self.assertEqual(body, {"model": "gpt-3.5-turbo-instruct", "prompt": "Tell me a story",
                                "max_tokens": 8})
        [record] = self.access_records()
        self.assertEqual((record["route"], record["input_tokens"], record["output_tokens"]),
                         ("completions", 5, 4))

    async def test_prompt_shapes_and_n(self) -> None:
        """Lists of strings and token arrays pass; ``n`` choices per prompt come back."""
        for prompt in (["a", "b"], [1, 2, 3], [[1, 2], [3]]):
            answer = await self.sdk(self.client.completions.create, model="renamed",
                                    prompt=prompt, n=2)
            self.assertEqual(len(answer.choices), 4 if len(prompt) == 2 else 2)
        self.assertEqual([body["prompt"] for _, _, body in self.fake.requests],
                         [["a", "b"], [1, 2, 3], [[1, 2], [3]]])
        self.assertEqual({body["model"] for _, _, body in self.fake.requests},
                         {"upstream-name"})

    async def test_stream_usage_counted_not_shown(self) -> None:
        """Usage is asked of the upstream and counted, but not shown to one who did not ask."""
        stream = await self.sdk(self.client.completions.create, model="gpt-3.5-turbo-instruct",
                                prompt="Go", stream=True)
        chunks = await self.sdk(list, stream)
        self.assertEqual("".join(c.choices[0].text for c in chunks), "".join(COMPLETION_TEXT))
        self.assertTrue(all(c.choices for c in chunks))
        self.assertEqual(self.fake.requests[0][2]["stream_options"], {"include_usage": True})
        [record] = self.access_records()
        self.assertEqual((record["input_tokens"], record["output_tokens"]), (5, 4))
        self.assertFalse(record["usage_estimated"])

    async def test_stream_with_usage(self) -> None:
        stream = await self.sdk(self.client.completions.create, model="gpt-3.5-turbo-instruct",
                                prompt="Go", stream=True, stream_options={"include_usage": True})
        chunks = await self.sdk(list, stream)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.total_tokens, COMPLETION_USAGE["total_tokens"])

    async def test_demo(self) -> None:
        """The demo provider answers completions with no key, streamed or not."""
        answer = await self.sdk(self.client.completions.create, model="demo", prompt="Hi there",
                                max_tokens=3)
        self.assertEqual(answer.choices[0].finish_reason, "length")
        self.assertEqual(answer.usage.completion_tokens, 3)
        stream = await self.sdk(self.client.completions.create, model="demo", prompt="Hi",
                                max_tokens=3, stream=True)
        chunks = await self.sdk(list, stream)
        self.assertEqual("".join(c.choices[0].text for c in chunks), answer.choices[0].text)

    async def test_bad_requests(self) -> None:
        cases = [
            (b"{not json", None),
            (orjson.dumps({"prompt": "x"}), "model"),
            (orjson.dumps({"model": "m"}), "prompt"),
            (orjson.dumps({"model": "m", "prompt": [1, "a"]}), "prompt"),
            (orjson.dumps({"model": "m", "prompt": "x", "n": 0}), "n"),
            (orjson.dumps({"model": "m", "prompt": "x", "stream": "yes"}), "stream"),
        ]
        for body, param in cases:
            response = await self.post("/v1/completions", body)
            self.assertEqual(response.code, 400, body)
            error = (await response.json())["error"]
            self.assertEqual((error["type"], error["param"]), ("invalid_request_error", param))
        self.assertEqual(self.fake.requests, [])

    async def test_provider_without_completions(self) -> None:
        """An Anthropic route has no legacy completions: a clear 400, nothing sent."""
        response = await self.post("/v1/completions", orjson.dumps(
            {"model": "claude-sonnet-4", "prompt": "x"}))
        self.assertEqual(response.code, 400)
        error = (await response.json())["error"]
        self.assertIn("does not offer the completions API", error["message"])
        self.assertEqual(error["code"], "unsupported_api")
        self.assertEqual(self.claude.requests, [])

    async def test_upstream_error_passed(self) -> None:
        response = await self.post("/v1/completions", orjson.dumps(
            {"model": "error-429", "prompt": "x"}))
        self.assertEqual(response.code, 429)
        self.assertEqual((await response.json())["error"]["code"], "fake_429")
