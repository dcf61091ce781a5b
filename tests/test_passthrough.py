"""End to end: ``/p/{provider}/...`` forwarded to a configured provider's own API."""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from io import BytesIO
from typing import Any

import anthropic
import attrs
import openai
import orjson
import treq
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, FileBodyProducer, ResponseFailed
from twisted.web.http_headers import Headers

from tests.fake_anthropic import FINAL_USAGE, START_USAGE, TEXT
from tests.fake_openai import CONTENT, USAGE
from tests.fake_openai_responses import USAGE as RESPONSES_USAGE
from tests.fake_openai_rest import ECHO_USAGE, GZIP_STREAM
from tests.gateway_harness import CONFIG, GatewayTestCase
from txgateway.usage import Usage
from txgateway.web.passthrough import (
    INFLATE_LIMIT,
    INFLATE_STEP,
    USAGE_PEEK_LIMIT,
    AnswerUsage,
    Inflating,
    StreamUsage,
    _usage_reader,
)

LIMIT = 4 * 1024 * 1024


class PassthroughTests(GatewayTestCase):
    config = CONFIG.replace("max_body_bytes: 65536", f"max_body_bytes: {LIMIT}")

    async def request(self, method: bytes, path: bytes, body: bytes | None = None,
                      headers: dict[bytes, list[bytes]] | None = None) -> tuple[Any, bytes]:
        """A request whose path is sent exactly as written (no client-side normalising)."""
        agent = Agent(reactor, pool=self.pool)
        response = await agent.request(
            method, self.base_url.encode() + path, Headers(headers or {}),
            None if body is None else FileBodyProducer(BytesIO(body)))
        return response, await treq.content(response)

    async def test_get_with_query_and_credentials(self) -> None:
        """The query is kept, the caller's key replaced by the provider's, hops dropped."""
        response, body = await self.request(
            b"GET", b"/p/fake/echo/sub?x=1&y=two%20words",
            headers={b"authorization": [b"Bearer sk-caller"], b"x-api-key": [b"sk-caller"],
                     b"x-custom": [b"kept"], b"connection": [b"keep-alive, x-hop"],
                     b"x-hop": [b"dropped"]})
        self.assertEqual(response.code, 200)
        answer = orjson.loads(body)
        self.assertEqual((answer["method"], answer["uri"]),
                         ("GET", "/v1/echo/sub?x=1&y=two%20words"))
        method, uri, headers, sent = self.fake.echoes[0]
        self.assertEqual(headers[b"Authorization"], [b"Bearer sk-upstream-secret"])
        self.assertEqual(headers[b"X-Team"], [b"blue"])
        self.assertEqual(headers[b"X-Custom"], [b"kept"])
        self.assertNotIn(b"X-Api-Key", headers)
        self.assertNotIn(b"X-Hop", headers)
        self.assertEqual(response.headers.getRawHeaders(b"x-upstream"), [b"yes"])
        self.assertEqual(response.length, len(body))
        [record] = self.access_records()
        self.assertEqual((record["route"], record["provider"], record["input_tokens"],
                          record["output_tokens"]), ("passthrough", "fake", 3, 2))

    async def test_post_body_streamed_up(self) -> None:
        body = os.urandom(2 * 1024 * 1024)
        response = await treq.post(self.base_url + "/p/fake/echo", body, pool=self.pool,
                                   headers={b"content-type": [b"application/octet-stream"]})
        answer = await response.json()
        self.assertEqual((answer["method"], answer["body_size"]), ("POST", len(body)))
        self.assertEqual(answer["body_sha256"], hashlib.sha256(body).hexdigest())

    async def test_json_model_recorded(self) -> None:
        await self.request(b"PUT", b"/p/fake/echo", orjson.dumps({"model": "gpt-4o"}),
                           {b"content-type": [b"application/json"]})
        [record] = self.access_records()
        self.assertEqual((record["model"], self.fake.echoes[0][0]), ("gpt-4o", b"PUT"))

    async def test_answer_relayed_as_it_arrives(self) -> None:
        arrivals: list[tuple[float, bytes]] = []
        response = await treq.get(self.base_url + "/p/fake/echo-stream", pool=self.pool)
        await treq.collect(response, lambda data: arrivals.append((reactor.seconds(), data)))
        self.assertEqual(b"".join(data for _, data in arrivals), b"part0;part1;part2;part3;")
        self.assertGreater(len(arrivals), 1)
        self.assertGreater(arrivals[-1][0] - arrivals[0][0], 0.1)

    async def test_redirect_not_followed(self) -> None:
        response, _ = await self.request(b"GET", b"/p/fake/redirect")
        self.assertEqual(response.code, 302)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/v1/echo/redirected"])
        self.assertEqual(len(self.fake.echoes), 1)

    async def test_unknown_provider(self) -> None:
        for path in (b"/p/nobody/echo", b"/p/demo/echo", b"/p/", b"/p"):
            response, body = await self.request(b"GET", path)
            self.assertEqual(response.code, 404, path)
            self.assertIn("error", orjson.loads(body))
        self.assertEqual(self.fake.echoes, [])

    async def test_escaping_paths_refused(self) -> None:
        for path in (b"/p/fake/../secret", b"/p/fake/echo/%2e%2e/x", b"/p/fake/a%2Fb",
                     b"/p/fake/http://evil.example/x", b"/p/fake/echo//x"):
            response, body = await self.request(b"GET", path)
            self.assertEqual(response.code, 400, path)
            self.assertEqual(orjson.loads(body)["error"]["code"], "invalid_path")
        self.assertEqual(self.fake.echoes, [])

    async def test_unreachable_provider(self) -> None:
        response, body = await self.request(b"GET", b"/p/nowhere/models")
        self.assertEqual(response.code, 502)
        self.assertEqual(orjson.loads(body)["error"]["code"], "upstream_unreachable")


class PassthroughStreamUsageTests(GatewayTestCase):
    """SSE answers relayed through ``/p/...`` as they came, their usage read on the side."""

    def passthrough_client(self, provider: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{self.base_url}/p/{provider}", api_key="sk-caller",
                               max_retries=0, timeout=10)
        self.addCleanup(client.close)
        return client

    def record(self) -> dict[str, Any]:
        [record] = self.access_records()
        self.assertEqual((record["route"], record["status"], record["stream"]),
                         ("passthrough", 200, True))
        return record

    async def test_chat_stream_usage(self) -> None:
        """OpenAI chat chunks with ``stream_options.include_usage``, through the openai SDK."""
        client = self.passthrough_client("fake")

        def stream() -> list[Any]:
            return list(client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True,
                stream_options={"include_usage": True}))

        chunks = await self.sdk(stream)
        self.assertEqual("".join(chunk.choices[0].delta.content or "" for chunk in chunks
                                 if chunk.choices), "".join(CONTENT))
        self.assertEqual(chunks[-1].usage.prompt_tokens, USAGE["prompt_tokens"])
        record = self.record()
        self.assertEqual((record["model"], record["input_tokens"], record["output_tokens"],
                          record["cached_input_tokens"], record["usage_estimated"]),
                         ("gpt-4o", 11, 4, 3, False))
        # gpt-4o: $2.50 per million fresh input tokens, $1.25 cached, $10 output.
        self.assertAlmostEqual(record["cost_usd"], (8 * 2.5 + 3 * 1.25 + 4 * 10) / 1e6)

    async def test_chat_stream_without_usage(self) -> None:
        """A stream that reports no usage records none: nothing is made up."""
        client = self.passthrough_client("fake")

        def stream() -> list[Any]:
            return list(client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], stream=True))

        self.assertEqual(len(await self.sdk(stream)), len(CONTENT) + 2)
        record = self.record()
        self.assertEqual((record["input_tokens"], record["output_tokens"], record["cost_usd"]),
                         (0, 0, 0.0))

    async def test_responses_stream_usage(self) -> None:
        """The Responses API's ``response.completed`` event, through the openai SDK."""
        client = self.passthrough_client("fake")

        def stream() -> list[Any]:
            return list(client.responses.create(model="gpt-4o", input="Hi", stream=True))

        events = await self.sdk(stream)
        self.assertEqual(events[-1].type, "response.completed")
        record = self.record()
        self.assertEqual(
            (record["input_tokens"], record["output_tokens"], record["cached_input_tokens"],
             record["reasoning_tokens"]),
            (RESPONSES_USAGE["input_tokens"], RESPONSES_USAGE["output_tokens"], 5, 2))

    async def test_anthropic_stream_usage(self) -> None:
        """Anthropic's ``message_start`` and ``message_delta``, through the anthropic SDK."""
        client = anthropic.Anthropic(base_url=f"{self.base_url}/p/claude", api_key="sk-caller",
                                     max_retries=0, timeout=10)
        self.addCleanup(client.close)

        def stream() -> list[Any]:
            with client.messages.stream(model="claude-sonnet-4", max_tokens=100, messages=[
                    {"role": "user", "content": "Hi"}]) as events:
                return [events.get_final_message(), self.claude.requests[-1][1]]

        message, headers = await self.sdk(stream)
        self.assertEqual(message.content[0].text, "".join(TEXT))
        self.assertEqual(headers[b"X-Api-Key"], [b"sk-ant-upstream"])
        record = self.record()
        self.assertEqual(
            (record["model"], record["input_tokens"], record["output_tokens"],
             record["cached_input_tokens"], record["cache_creation_input_tokens"]),
            ("claude-sonnet-4", 20 + 7 + 5, FINAL_USAGE["output_tokens"], 7, 5))
        # claude-sonnet-4: $3 per million input tokens, $0.30 cache reads, $3.75 cache
        # writes, $15 output.
        self.assertAlmostEqual(record["cost_usd"], (20 * 3 + 7 * 0.3 + 5 * 3.75 + 9 * 15) / 1e6)

    async def test_model_from_the_stream(self) -> None:
        """A body the gateway does not read as JSON names no model: the stream's is recorded."""
        body = orjson.dumps({"model": "claude-sonnet-4", "max_tokens": 100, "stream": True,
                             "messages": [{"role": "user", "content": "Hi"}]})
        response = await treq.post(self.base_url + "/p/claude/v1/messages", body,
                                   pool=self.pool,
                                   headers={b"content-type": [b"text/plain"]})
        relayed = await treq.content(response)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"text/event-stream; charset=utf-8"])
        self.assertTrue(relayed.startswith(b"event: message_start\n"))
        self.assertTrue(relayed.endswith(b'event: message_stop\ndata: {"type":"message_stop"}'
                                         b"\n\n"))
        record = self.record()
        self.assertEqual((record["model"], record["input_tokens"], record["output_tokens"]),
                         ("claude-sonnet-4", 32, 9))

    async def test_cut_stream_keeps_the_usage_seen(self) -> None:
        """A stream cut after ``message_start``: its input is kept, the record estimated."""
        response = await self.post("/p/claude/v1/messages", orjson.dumps({
            "model": "claude-cut-stream", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}))
        with self.assertRaises(ResponseFailed):
            await treq.content(response)
        [record] = self.access_records()
        self.assertEqual((record["status"], record["input_tokens"], record["output_tokens"],
                          record["usage_estimated"]), (502, 32, 1, True))


class GzipTests(GatewayTestCase):
    """
    The openai SDK accepts gzip, and the caller's ``Accept-Encoding`` goes upstream: a gzip'd
    answer is relayed as it came, its usage read all the same.
    """

    def passthrough_client(self) -> openai.OpenAI:
        client = openai.OpenAI(base_url=f"{self.base_url}/p/fake", api_key="sk-caller",
                               max_retries=0, timeout=10)
        self.addCleanup(client.close)
        return client

    async def test_json_answer_through_the_sdk(self) -> None:
        answer = await self.sdk(self.passthrough_client().post, "/echo-gzip", cast_to=object,
                                body={"model": "gpt-4o"})
        self.assertEqual((answer["method"], answer["usage"]), ("POST", ECHO_USAGE))
        [(_, _, headers, _)] = self.fake.echoes
        self.assertIn(b"gzip", headers[b"Accept-Encoding"][0])
        [record] = self.access_records()
        self.assertEqual((record["model"], record["input_tokens"], record["output_tokens"],
                          record["stream"]), ("gpt-4o", 3, 2, False))

    async def get(self, path: bytes, accept: bytes) -> tuple[Any, list[bytes]]:
        """The answer's bytes as they arrived, undecoded (treq would inflate them)."""
        agent = Agent(reactor, pool=self.pool)
        response = await agent.request(b"GET", self.base_url.encode() + path,
                                       Headers({b"accept-encoding": [accept]}))
        pieces: list[bytes] = []
        await treq.collect(response, pieces.append)
        return response, pieces

    async def test_json_answer_relayed_untouched(self) -> None:
        response, pieces = await self.get(b"/p/fake/echo-gzip", b"gzip")
        relayed = b"".join(pieces)
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertEqual(response.length, len(relayed))
        self.assertEqual(orjson.loads(gzip.decompress(relayed))["usage"], ECHO_USAGE)
        [record] = self.access_records()
        self.assertEqual((record["input_tokens"], record["output_tokens"]), (3, 2))

    async def test_stream_through_the_sdk(self) -> None:
        def stream() -> list[Any]:
            return list(self.passthrough_client().post(
                "/echo-gzip-stream", cast_to=object, body={}, stream=True,
                stream_cls=openai.Stream[object]))

        chunks = await self.sdk(stream)
        self.assertEqual([chunk["choices"] and chunk["choices"][0]["delta"]["content"]
                          for chunk in chunks], ["zipped", []])
        [record] = self.access_records()
        self.assertEqual((record["model"], record["input_tokens"], record["output_tokens"],
                          record["stream"], record["usage_estimated"]),
                         ("gpt-gz", 13, 7, True, False))

    async def test_stream_relayed_untouched_as_it_arrives(self) -> None:
        response, pieces = await self.get(b"/p/fake/echo-gzip-stream", b"gzip, deflate")
        self.assertEqual(response.headers.getRawHeaders(b"content-encoding"), [b"gzip"])
        self.assertGreater(len(pieces), 1)
        self.assertEqual(gzip.decompress(b"".join(pieces)), b"".join(GZIP_STREAM))
        [record] = self.access_records()
        self.assertEqual((record["input_tokens"], record["output_tokens"]), (13, 7))

    async def test_the_callers_accept_encoding_goes_up_as_sent(self) -> None:
        response, pieces = await self.get(b"/p/fake/echo-gzip", b"br")
        self.assertEqual(orjson.loads(b"".join(pieces))["usage"], ECHO_USAGE)
        [(_, _, headers, _)] = self.fake.echoes
        self.assertEqual(headers[b"Accept-Encoding"], [b"br"])
        [record] = self.access_records()
        self.assertEqual(record["input_tokens"], 3)  # the fake answered plain


class InflatingTests(SynchronousTestCase):
    """`Inflating` however the bytes are cut, and within its bounds."""

    def test_byte_by_byte(self) -> None:
        packed = gzip.compress(b"".join(GZIP_STREAM))
        reader = Inflating(StreamUsage(), INFLATE_LIMIT)
        for index in range(len(packed)):
            reader.feed(packed[index:index + 1])
        self.assertEqual(reader.read(), (Usage(input_tokens=13, output_tokens=7), "gpt-gz"))
        self.assertTrue(reader.stream)

    def test_a_bomb_is_inflated_in_steps_up_to_the_limit(self) -> None:
        fed: list[int] = []

        class Counting(AnswerUsage):
            def feed(self, data: bytes) -> None:
                fed.append(len(data))

        packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
        bomb = packer.compress(bytes(16 * 1024 * 1024)) + packer.flush()
        self.assertLess(len(bomb), 20 * 1024)
        limit = 5 * INFLATE_STEP + 7
        reader = Inflating(Counting(), limit)
        reader.feed(bomb[:len(bomb) // 2])
        reader.feed(bomb[len(bomb) // 2:])
        self.assertEqual((max(fed), sum(fed)), (INFLATE_STEP, limit))

    def test_a_large_json_answer_is_given_up(self) -> None:
        answer = orjson.dumps({"usage": ECHO_USAGE, "padding": " " * USAGE_PEEK_LIMIT})
        reader = Inflating(AnswerUsage(), USAGE_PEEK_LIMIT + 1)
        reader.feed(gzip.compress(answer))
        self.assertEqual(reader.read(), (None, ""))
        small = Inflating(AnswerUsage(), USAGE_PEEK_LIMIT + 1)
        small.feed(gzip.compress(orjson.dumps({"usage": ECHO_USAGE, "model": "m"})))
        self.assertEqual(small.read(), (Usage(input_tokens=3, output_tokens=2), "m"))

    def test_which_codings_are_read(self) -> None:
        def reader(coding: bytes | None) -> Any:
            headers = Headers({b"content-type": [b"application/json"]})
            if coding is not None:
                headers.setRawHeaders(b"content-encoding", [coding])
            return _usage_reader(attrs.make_class("Response", ["code", "headers"])(
                200, headers))

        self.assertIsInstance(reader(None), AnswerUsage)
        self.assertIsInstance(reader(b"identity"), AnswerUsage)
        self.assertIsInstance(reader(b"GZIP"), Inflating)
        self.assertIsInstance(reader(b"x-gzip"), Inflating)
        for unread in (b"br", b"deflate", b"gzip, br"):
            self.assertIsNone(reader(unread), unread)

    def test_bytes_that_do_not_inflate(self) -> None:
        reader = Inflating(AnswerUsage(), USAGE_PEEK_LIMIT + 1)
        reader.feed(b"not gzip at all")
        reader.feed(gzip.compress(b"{}"))
        self.assertEqual(reader.read(), (None, ""))


class StreamUsageTests(SynchronousTestCase):
    """`StreamUsage` however the bytes are cut."""

    def test_byte_by_byte(self) -> None:
        stream = (b"event: message_start\r\ndata: " + orjson.dumps({
            "type": "message_start", "message": {"model": "claude-x", "usage": START_USAGE}})
            + b"\r\n\r\nevent: ping\r\ndata: {\"type\": \"ping\"}\r\n\r\n"
            b"event: message_delta\r\ndata: " + orjson.dumps({
                "type": "message_delta", "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 9}}) + b"\r\n\r\n")
        reader = StreamUsage()
        for index in range(len(stream)):
            reader.feed(stream[index:index + 1])
        self.assertEqual(reader.read(), (Usage(input_tokens=32, output_tokens=9,
                                               cached_input_tokens=7,
                                               cache_creation_tokens=5), "claude-x"))
