"""End to end: the openai SDK, the gateway and a fake OpenAI upstream, over loopback sockets."""

from __future__ import annotations

import json

import openai
import orjson
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from tests.fake_openai import CONTENT, TOOL_ARGUMENT_FRAGMENTS, USAGE
from tests.gateway_harness import GatewayTestCase, closed_port
from txgateway import accounting
from txgateway.limits import open_limiter

MESSAGES = [{"role": "user", "content": "Say hello"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}]


def collect_stream(stream: openai.Stream) -> list:
    return list(stream)


class PlainAndStreamingTests(GatewayTestCase):
    async def test_completion(self) -> None:
        """A plain completion comes back as the upstream sent it, usage included."""
        answer = await self.sdk(self.client.chat.completions.create, model="gpt-4o-mini",
                                messages=MESSAGES)
        self.assertEqual(answer.choices[0].message.content, "".join(CONTENT))
        self.assertEqual(answer.usage.prompt_tokens, USAGE["prompt_tokens"])
        self.assertEqual(answer.usage.prompt_tokens_details.cached_tokens, 3)
        path, headers, body = self.fake.requests[0]
        self.assertEqual(path, b"/v1/chat/completions")
        self.assertEqual(headers[b"Authorization"], [b"Bearer sk-upstream-secret"])
        self.assertEqual(headers[b"X-Team"], [b"blue"])
        self.assertEqual(body, {"model": "gpt-4o-mini", "messages": MESSAGES})

    async def test_unknown_fields_pass_through(self) -> None:
        """Fields the gateway does not route on reach the upstream untouched."""
        request = {"model": "gpt-4o-mini", "messages": MESSAGES, "n": 2, "seed": 7,
                   "response_format": {"type": "json_schema", "json_schema": {
                       "name": "x", "schema": {"type": "object"}}},
                   "some_future_field": {"nested": [1, 2.5, None, "é"]}}
        response = await self.post("/v1/chat/completions", orjson.dumps(request))
        answer = await response.json()
        self.assertEqual(response.code, 200)
        self.assertEqual(len(answer["choices"]), 2)
        self.assertEqual(self.fake.requests[0][2], request)

    async def test_no_cookies_between_upstream_calls(self) -> None:
        """A Set-Cookie from an upstream is never sent back on a later call."""
        for model in ("cookie-setter", "gpt-4o-mini"):
            await self.sdk(self.client.chat.completions.create, model=model, messages=MESSAGES)
        self.assertNotIn(b"Cookie", self.fake.requests[1][1])

    async def test_model_renamed(self) -> None:
        """A route's upstream model name replaces the caller's, and only that changes."""
        await self.sdk(self.client.chat.completions.create, model="renamed", messages=MESSAGES,
                       temperature=0.5)
        self.assertEqual(self.fake.requests[0][2],
                         {"model": "upstream-name", "messages": MESSAGES, "temperature": 0.5})

    async def test_stream(self) -> None:
        """
        A stream arrives chunk by chunk; usage is asked of the upstream and counted, but the
        usage chunk is not shown to a caller who did not ask for it.
        """
        stream = await self.sdk(self.client.chat.completions.create, model="gpt-4o-mini",
                                messages=MESSAGES, stream=True)
        chunks = await self.sdk(collect_stream, stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
        self.assertEqual(text, "".join(CONTENT))
        self.assertTrue(all(c.choices for c in chunks))
        self.assertEqual(self.fake.requests[0][2]["stream_options"], {"include_usage": True})
        [record] = self.access_records()
        self.assertEqual((record["input_tokens"], record["output_tokens"]), (11, 4))
        self.assertFalse(record["usage_estimated"])

    async def test_stream_with_usage(self) -> None:
        """A caller who asks for usage gets the usage chunk."""
        stream = await self.sdk(self.client.chat.completions.create, model="gpt-4o-mini",
                                messages=MESSAGES, stream=True,
                                stream_options={"include_usage": True})
        chunks = await self.sdk(collect_stream, stream)
        self.assertEqual(chunks[-1].choices, [])
        self.assertEqual(chunks[-1].usage.completion_tokens, USAGE["completion_tokens"])

    async def test_stream_headers(self) -> None:
        response = await self.post("/v1/chat/completions", orjson.dumps(
            {"model": "m", "messages": MESSAGES, "stream": True}))
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream; charset=utf-8"])
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-cache"])
        body = await response.content()
        self.assertTrue(body.endswith(b"data: [DONE]\n\n"))

    async def test_tools(self) -> None:
        answer = await self.sdk(self.client.chat.completions.create, model="gpt-4o",
                                messages=MESSAGES, tools=TOOLS, tool_choice="required")
        call = answer.choices[0].message.tool_calls[0]
        self.assertEqual((call.id, call.function.name), ("call_fake1", "get_weather"))
        self.assertEqual(json.loads(call.function.arguments), {"city": "Paris"})
        self.assertEqual(self.fake.requests[0][2]["tools"], TOOLS)

    async def test_tools_streamed(self) -> None:
        """Streamed tool-call fragments reassemble into the name and valid JSON arguments."""
        stream = await self.sdk(self.client.chat.completions.create, model="gpt-4o",
                                messages=MESSAGES, tools=TOOLS, stream=True)
        chunks = await self.sdk(collect_stream, stream)
        calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
        self.assertEqual(calls[0].function.name, "get_weather")
        self.assertEqual({call.index for call in calls}, {0})
        arguments = "".join(call.function.arguments or "" for call in calls)
        self.assertEqual(arguments, "".join(TOOL_ARGUMENT_FRAGMENTS))
        self.assertEqual(chunks[-1].choices[0].finish_reason, "tool_calls")

    async def test_demo_provider(self) -> None:
        """The demo provider answers locally with honest counts, plain and streamed."""
        answer = await self.sdk(self.client.chat.completions.create, model="demo",
                                messages=[{"role": "user", "content": "one two three"}])
        self.assertIn('"one two three"', answer.choices[0].message.content)
        self.assertEqual(answer.usage.prompt_tokens, 3)
        self.assertEqual(answer.usage.completion_tokens,
                         len(answer.choices[0].message.content.split()))
        stream = await self.sdk(self.client.chat.completions.create, model="demo",
                                messages=[{"role": "user", "content": "one two three"}],
                                stream=True, stream_options={"include_usage": True})
        chunks = await self.sdk(collect_stream, stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        self.assertEqual(text, answer.choices[0].message.content)
        self.assertEqual(chunks[-1].usage.completion_tokens, answer.usage.completion_tokens)
        self.assertEqual(self.fake.requests, [])


class UpstreamFaultTests(GatewayTestCase):
    async def test_upstream_errors_pass_through(self) -> None:
        """Upstream OpenAI errors reach the caller with their status and body."""
        for status, error_class in [(400, openai.BadRequestError),
                                    (401, openai.AuthenticationError),
                                    (429, openai.RateLimitError),
                                    (500, openai.InternalServerError)]:
            try:
                await self.sdk(self.client.chat.completions.create, model=f"error-{status}",
                               messages=MESSAGES)
            except error_class as error:
                self.assertEqual(error.status_code, status)
                self.assertEqual(error.body["message"], f"fake upstream error {status}")
                if status == 429:
                    self.assertEqual(error.response.headers["retry-after"], "7")
            else:
                self.fail(f"error-{status} did not raise")

    async def test_non_json_upstream_error(self) -> None:
        """A proxy's HTML error page becomes a 502 with an OpenAI error body."""
        with self.assertRaises(openai.InternalServerError) as caught:
            await self.sdk(self.client.chat.completions.create, model="html-502",
                           messages=MESSAGES)
        self.assertEqual(caught.exception.status_code, 502)
        self.assertIn("Bad gateway", caught.exception.body["message"])

    async def test_unreachable(self) -> None:
        with self.assertRaises(openai.InternalServerError) as caught:
            await self.sdk(self.client.chat.completions.create, model="unreachable",
                           messages=MESSAGES)
        self.assertEqual(caught.exception.status_code, 502)
        self.assertEqual(caught.exception.body["code"], "upstream_unreachable")

    async def test_no_headers_in_time(self) -> None:
        """An upstream that never answers gives a 504 after the first-byte timeout."""
        started = reactor.seconds()
        with self.assertRaises(openai.InternalServerError) as caught:
            await self.sdk(self.client.chat.completions.create, model="slow-headers",
                           messages=MESSAGES)
        self.assertEqual(caught.exception.status_code, 504)
        self.assertLess(reactor.seconds() - started, 3)
        self.assertEqual(await self.fake.wait_for_disconnect(), "slow-headers")

    async def test_stalled_body(self) -> None:
        """A body that stalls after the headers gives a 504 after the idle timeout."""
        with self.assertRaises(openai.InternalServerError) as caught:
            await self.sdk(self.client.chat.completions.create, model="stall-body",
                           messages=MESSAGES)
        self.assertEqual(caught.exception.status_code, 504)
        self.assertEqual(caught.exception.body["code"], "upstream_timeout")

    async def test_stalled_stream(self) -> None:
        """A stream that goes silent ends with an error event that the SDK raises."""
        stream = await self.sdk(self.client.chat.completions.create, model="stall-stream",
                                messages=MESSAGES, stream=True)
        with self.assertRaises(openai.APIError) as caught:
            await self.sdk(collect_stream, stream)
        self.assertIn("sent nothing for 0.5 s", str(caught.exception))
        [record] = self.access_records()
        self.assertEqual(record["status"], 504)

    async def test_cut_stream(self) -> None:
        """A stream cut mid-way ends with an error, not a hang, and what was seen is counted."""
        stream = await self.sdk(self.client.chat.completions.create, model="cut-stream",
                                messages=MESSAGES, stream=True)
        with self.assertRaises(openai.APIError) as caught:
            await self.sdk(collect_stream, stream)
        self.assertIn("broke", str(caught.exception))
        [record] = self.access_records()
        self.assertEqual((record["status"], record["output_tokens"]), (502, 1))
        self.assertTrue(record["usage_estimated"])


class _FirstChunkThenLeave(Protocol):
    def __init__(self) -> None:
        self.first = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.first.called:
            self.first.callback(data)
            self.transport.stopProducing()  # the client hangs up

    def connectionLost(self, reason: object = None) -> None:
        pass


class ClientDisconnectTests(GatewayTestCase):
    async def test_stream_abandoned(self) -> None:
        """A client leaving a stream aborts the upstream request at once; usage is recorded."""
        response = await treq.post(
            self.base_url + "/v1/chat/completions",
            orjson.dumps({"model": "slow-stream", "messages": MESSAGES, "stream": True}),
            unbuffered=True, pool=self.pool)
        reader = _FirstChunkThenLeave()
        response.deliverBody(reader)
        self.assertIn(b"data: ", await reader.first)
        await self.check_upstream_dropped(self.fake, "slow-stream")

    async def test_waiting_for_headers_abandoned(self) -> None:
        """A client leaving before the upstream answered cancels the upstream request."""
        requesting = treq.post(
            self.base_url + "/v1/chat/completions",
            orjson.dumps({"model": "slow-headers", "messages": MESSAGES}), pool=self.pool)
        await deferLater(reactor, 0.2)
        requesting.cancel()
        started = reactor.seconds()
        self.assertEqual(await self.fake.wait_for_disconnect(), "slow-headers")
        self.assertLess(reactor.seconds() - started, 0.5)
        self.failureResultOf(requesting)


class BadInputTests(GatewayTestCase):
    async def check_error(self, body: bytes, status: int, fragment: str,
                          method: str = "POST") -> None:
        response = await treq.request(method, self.base_url + "/v1/chat/completions",
                                      data=body, pool=self.pool)
        error = (await response.json())["error"]
        self.assertEqual(response.code, status)
        self.assertEqual(set(error), {"message", "type", "param", "code"})
        self.assertIn(fragment, error["message"])

    async def test_bad_requests(self) -> None:
        await self.check_error(b'{"model": ', 400, "not valid JSON")
        await self.check_error(b"[1, 2]", 400, "must be a JSON object")
        await self.check_error(b"", 400, "empty")
        await self.check_error(b'{"messages": []}', 400, "model")
        await self.check_error(b'{"model": 5, "messages": []}', 400, "model")
        await self.check_error(b'{"model": "m", "messages": "hi"}', 400, "messages")
        await self.check_error(b'{"model": "m", "messages": [], "stream": "yes"}', 400,
                               "stream")
        await self.check_error(b"\xff\xfe", 400, "not valid JSON")
        await self.check_error(b"", 405, "GET is not allowed", method="GET")
        self.assertEqual(self.fake.requests, [])
        # Nothing else was disturbed.
        answer = await self.sdk(self.client.chat.completions.create, model="m",
                                messages=MESSAGES)
        self.assertEqual(answer.choices[0].message.content, "".join(CONTENT))

    async def test_unknown_model(self) -> None:
        self.service.gateway.router._patterns.clear()
        with self.assertRaises(openai.NotFoundError) as caught:
            await self.sdk(self.client.chat.completions.create, model="no-such-model",
                           messages=MESSAGES)
        self.assertEqual(caught.exception.body["code"], "model_not_found")

    async def test_unknown_path(self) -> None:
        response = await treq.get(self.base_url + "/v1/nope", pool=self.pool)
        self.assertEqual(response.code, 404)
        self.assertEqual((await response.json())["error"]["message"], "Invalid URL (GET /v1/nope)")

    async def test_oversized_body(self) -> None:
        """A body over the limit gets 413 with an OpenAI error, for the SDK too."""
        big = [{"role": "user", "content": "x" * 70000}]
        with self.assertRaises(openai.APIStatusError) as caught:
            await self.sdk(self.client.chat.completions.create, model="m", messages=big)
        self.assertEqual(caught.exception.status_code, 413)
        self.assertEqual(caught.exception.body["code"], "request_too_large")
        self.assertEqual(self.fake.requests, [])
        answer = await self.sdk(self.client.chat.completions.create, model="m",
                                messages=MESSAGES)
        self.assertEqual(answer.choices[0].message.content, "".join(CONTENT))


class _Stalled(Protocol):
    """A client that sends a request and then does not read for a while."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = []
        self.done = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)
        self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(b"".join(self.received))


class BackpressureTests(GatewayTestCase):
    async def test_slow_client_pauses_upstream(self) -> None:
        """
        While the client reads nothing, the upstream is paused: the gateway does not buffer
        the stream in memory.  When the client reads again, the whole stream arrives.
        """
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        body = orjson.dumps({"model": "big-stream", "messages": MESSAGES, "stream": True})
        port = int(self.base_url.rsplit(":", 1)[1])
        client = _Stalled(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                          b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(body), body))
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        await deferLater(reactor, 1.0)
        self.assertGreater(self.fake.big_stream_pauses, 0)
        # Socket buffers on both sides hold a few MB at most, far from the 64 MB stream.
        self.assertLess(self.fake.big_stream_bytes, 24 * 1024 * 1024)
        client.transport.resumeProducing()
        received = await client.done
        self.assertTrue(received.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), received[-80:])
        self.assertGreater(len(received), 64 * 1024 * 1024)


class ModelsHealthMetricsTests(GatewayTestCase):
    async def test_models(self) -> None:
        models = await self.sdk(self.client.models.list)
        self.assertEqual(sorted(m.id for m in models.data), ["demo", "renamed", "unreachable"])
        model = await self.sdk(self.client.models.retrieve, "renamed")
        self.assertEqual((model.id, model.owned_by), ("renamed", "fake"))

    async def test_health_and_ready(self) -> None:
        response = await treq.get(self.base_url + "/health", pool=self.pool)
        self.assertEqual((response.code, await response.json()), (200, {"status": "ok"}))
        response = await treq.get(self.base_url + "/health/ready", pool=self.pool)
        self.assertEqual(response.code, 200)
        self.assertEqual((await response.json())["status"], "ready")
        self.service.gateway.draining = True
        response = await treq.get(self.base_url + "/health/ready", pool=self.pool)
        self.assertEqual(response.code, 503)
        self.assertFalse((await response.json())["checks"]["accepting"])

    async def test_ready_but_degraded_while_the_limiter_is_down(self) -> None:
        """Redis down: the limiter fails open and calls are served, so readiness stays 200."""
        gateway = self.service.gateway
        down = open_limiter(f"redis://127.0.0.1:{closed_port()}/0?timeout=0.2", reactor)
        self.addCleanup(down.close)
        self.patch(gateway, "limiter", down)
        response = await treq.get(self.base_url + "/health/ready", pool=self.pool)
        document = await response.json()
        self.assertEqual((response.code, document["status"]), (200, "degraded"))
        self.assertEqual(document["checks"]["limiter"], False)
        completion = await self.sdk(self.client.chat.completions.create, model="gpt-4o-mini",
                                    messages=MESSAGES)
        self.assertTrue(completion.choices)

    async def test_made_up_models_do_not_grow_the_metrics(self) -> None:
        """
        Through a ``*`` route a caller may name any model: past `MODEL_LABELS` names, and
        for names longer than `MODEL_LABEL_LENGTH`, the series are labelled ``other``.
        """
        self.patch(accounting, "MODEL_LABELS", 2)
        for model in ("made-up-1", "made-up-2", "made-up-3", "made-up-1", "x" * 300):
            await self.sdk(self.client.chat.completions.create, model=model,
                           messages=MESSAGES)
        counts = {dict(labels)["model"]: value for (name, labels), value
                  in (await self.metrics()).items() if name == "txgateway_requests_total"}
        self.assertEqual(counts, {"made-up-1": 2, "made-up-2": 1, "other": 2})

    async def test_metrics(self) -> None:
        """Requests, tokens, durations and time to first token are counted, streams too."""
        await self.sdk(self.client.chat.completions.create, model="gpt-4o-mini",
                       messages=MESSAGES)
        stream = await self.sdk(self.client.chat.completions.create, model="gpt-4o-mini",
                                messages=MESSAGES, stream=True)
        await self.sdk(collect_stream, stream)
        with self.assertRaises(openai.RateLimitError):
            await self.sdk(self.client.chat.completions.create, model="error-429",
                           messages=MESSAGES)
        samples = await self.metrics()
        route = (("model", "gpt-4o-mini"), ("provider", "fake"), ("route", "chat"))
        self.assertEqual(samples[("txgateway_requests_total",
                                  tuple(sorted((*route, ("status", "200")))))], 2)
        self.assertEqual(samples[("txgateway_requests_total", (
            ("model", "error-429"), ("provider", "fake"), ("route", "chat"),
            ("status", "429")))], 1)
        self.assertEqual(samples[("txgateway_request_duration_seconds_count", route)], 2)
        self.assertEqual(samples[("txgateway_time_to_first_token_seconds_count", route)], 2)
        for kind, count in (("input", 11), ("output", 4)):
            labels = (("gen_ai_operation_name", "chat"), ("gen_ai_provider_name", "openai"),
                      ("gen_ai_request_model", "gpt-4o-mini"), ("gen_ai_token_type", kind))
            self.assertEqual(samples[("txgateway_gen_ai_client_token_usage_sum", labels)],
                             2 * count)
            self.assertEqual(samples[("txgateway_gen_ai_client_token_usage_count", labels)], 2)

    async def test_access_log(self) -> None:
        """Every request ends in one JSON access line with what it cost."""
        await self.sdk(self.client.chat.completions.create, model="renamed", messages=MESSAGES)
        await self.check_error_logged()
        first, second = self.access_records()
        self.assertEqual(
            {k: first[k] for k in ("route", "model", "provider", "upstream_model", "status",
                                   "input_tokens", "output_tokens", "cached_input_tokens")},
            {"route": "chat", "model": "renamed", "provider": "fake",
             "upstream_model": "upstream-name", "status": 200, "input_tokens": 11,
             "output_tokens": 4, "cached_input_tokens": 3})
        self.assertGreater(first["duration_ms"], 0)
        self.assertGreater(first["ttft_ms"], 0)
        self.assertEqual((second["status"], second["model"]), (400, ""))

    async def check_error_logged(self) -> None:
        response = await treq.post(self.base_url + "/v1/chat/completions", b"{",
                                   pool=self.pool)
        await response.content()

