"""Traces: gen_ai spans for calls and realtime sessions, exported over OTLP/HTTP on loopback."""

from __future__ import annotations

from typing import Any

import treq
from twisted.internet.threads import deferToThread
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from tests.gateway_harness import GatewayTestCase
from tests.otlp_receiver import attributes, start_receiver
from tests.realtime_harness import RealtimeTestCase, until
from txgateway.tracing import TracedRoot, TracingAgent

CALLER_TRACE = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"

SERVER, CLIENT = 2, 3  # OTLP's SpanKind numbers


class ExportingTraces:
    """Mixed in before a test case: its gateway exports to an OTLP receiver on loopback."""

    config: str

    async def _start(self) -> None:
        self.receiver, self.receiver_port = start_receiver()
        self.addCleanup(self.receiver_port.stopListening)  # type: ignore[attr-defined]
        endpoint = f"http://127.0.0.1:{self.receiver_port.getHost().port}/v1/traces"
        self.config += f"tracing:\n  otlp_endpoint: {endpoint}\n  service_name: gw-test\n"
        await super()._start()  # type: ignore[misc]


class TracingTests(ExportingTraces, GatewayTestCase):

    async def exported(self) -> list[tuple[dict[str, Any], Any]]:
        # The exporter posts from its own thread to the receiver this reactor serves.
        await deferToThread(self.service.gateway.tracing.provider.force_flush)
        return self.receiver.spans

    async def test_chat_call_is_a_server_span_with_an_upstream_child(self) -> None:
        answer = await self.sdk(
            self.client.chat.completions.with_raw_response.create, model="renamed",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"traceparent": TRACEPARENT})
        self.assertEqual(answer.status_code, 200)
        await treq.get(self.base_url + "/health", pool=self.pool)  # no span of its own
        spans = await self.exported()
        self.assertEqual(self.receiver.paths, [b"/v1/traces"] * len(self.receiver.paths))
        server = [span for _, span in spans if span.kind == SERVER]
        client = [span for _, span in spans if span.kind == CLIENT]
        self.assertEqual((len(server), len(client)), (1, 1))
        [(resource, _)] = {id(r): (r, s) for r, s in spans}.values()
        self.assertEqual(resource["service.name"], "gw-test")
        server, client = server[0], client[0]
        # The caller's trace continues: same trace, the caller's span as the parent.
        self.assertEqual(server.trace_id.hex(), CALLER_TRACE)
        self.assertEqual(server.parent_span_id.hex(), CALLER_SPAN)
        self.assertEqual(client.trace_id.hex(), CALLER_TRACE)
        self.assertEqual(client.parent_span_id, server.span_id)
        self.assertEqual(server.name, "chat renamed")
        self.assertEqual(client.name, "chat upstream-name")
        facts = attributes(server.attributes)
        self.assertEqual(facts["gen_ai.operation.name"], "chat")
        self.assertEqual(facts["gen_ai.provider.name"], "openai")
        self.assertEqual(facts["gen_ai.request.model"], "renamed")
        self.assertEqual(facts["http.response.status_code"], 200)
        usage = answer.parse().usage
        self.assertEqual(facts["gen_ai.usage.input_tokens"], usage.prompt_tokens)
        self.assertEqual(facts["gen_ai.usage.output_tokens"], usage.completion_tokens)
        self.assertEqual(facts["txgateway.request_id"], answer.headers["x-request-id"])
        upstream = attributes(client.attributes)
        self.assertEqual(upstream["gen_ai.request.model"], "upstream-name")
        self.assertEqual(upstream["http.response.status_code"], 200)
        self.assertEqual(upstream["server.address"], "127.0.0.1")
        self.assertEqual(upstream["url.path"], "/v1/chat/completions")
        self.assertLessEqual(server.start_time_unix_nano, client.start_time_unix_nano)
        self.assertLessEqual(client.end_time_unix_nano, server.end_time_unix_nano)
        # The upstream was told the client span as its parent.
        [(_, headers, _)] = self.fake.requests
        sent = {name.lower(): values for name, values in headers.items()}
        self.assertEqual(sent[b"traceparent"],
                         [f"00-{CALLER_TRACE}-{client.span_id.hex()}-01".encode()])

    async def test_a_call_without_traceparent_starts_a_trace_and_errors_say_so(self) -> None:
        response = await self.post("/v1/chat/completions",
                                   b'{"model":"unreachable","messages":[]}')
        self.assertEqual(response.code, 502)
        [server] = [span for _, span in await self.exported() if span.kind == SERVER]
        self.assertEqual(server.parent_span_id, b"")
        facts = attributes(server.attributes)
        self.assertEqual(facts["error.type"], "502")
        self.assertEqual(server.status.code, 2)  # STATUS_CODE_ERROR
        [client] = [span for _, span in self.receiver.spans if span.kind == CLIENT]
        self.assertEqual(attributes(client.attributes)["error.type"], "ConnectionRefusedError")

    async def test_a_stream_ends_its_span_when_the_stream_ends(self) -> None:
        chunks = await self.sdk(lambda: list(self.client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True})))
        [server] = [span for _, span in await self.exported() if span.kind == SERVER]
        facts = attributes(server.attributes)
        self.assertTrue(facts["txgateway.stream"])
        self.assertEqual(facts["gen_ai.usage.output_tokens"], chunks[-1].usage.completion_tokens)
        self.assertIn("gen_ai.first_byte", [event.name for event in server.events])


class TracingOffTests(GatewayTestCase):
    def test_nothing_traced_is_in_the_way(self) -> None:
        """With no endpoint the tree's root and the upstream agent are the plain ones."""
        gateway = self.service.gateway
        self.assertIsNone(gateway.tracing)
        self.assertIsNone(gateway.accountant.tracing)
        self.assertNotIsInstance(gateway.context.http_agent, TracingAgent)
        root = self.service.site.resource
        self.assertNotIsInstance(root, TracedRoot)
        request = DummyRequest([b"v1", b"chat", b"completions"])
        endpoint = getChildForRequest(root, request)
        self.assertEqual(type(endpoint).__name__, "ChatCompletions")


class RealtimeTracingTests(ExportingTraces, RealtimeTestCase):

    async def test_a_session_is_one_span_with_its_tokens(self) -> None:
        client = await self.connect("model=demo")
        await client.next("session.created")
        client.send_event(type="conversation.item.create", item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "hello there"}]})
        client.send_event(type="response.create")
        done = await client.next("response.done")
        client.sendClose(1000)
        await self.clients[0][1].closed
        await until(lambda: not self.service.gateway.realtime.active())
        await deferToThread(self.service.gateway.tracing.provider.force_flush)
        [(_, span)] = self.receiver.spans
        self.assertEqual((span.name, span.kind), ("realtime demo", SERVER))
        facts = attributes(span.attributes)
        [session] = self.service.gateway.realtime.recent()
        self.assertEqual(facts["gen_ai.conversation.id"], session.info.id)
        self.assertEqual(facts["gen_ai.provider.name"], "demo")
        usage = done["response"]["usage"]
        self.assertEqual(facts["gen_ai.usage.input_tokens"], usage["input_tokens"])
        self.assertEqual(facts["gen_ai.usage.output_tokens"], usage["output_tokens"])
        self.assertEqual(facts["txgateway.realtime.client_close_code"], 1000)
        self.assertNotIn("txgateway.realtime.ended_by", facts)  # a clean close by the caller
        self.assertGreater(span.end_time_unix_nano, span.start_time_unix_nano)
