"""``/v1/responses``: native to OpenAI-compatible upstreams, translated through chat to others."""

from __future__ import annotations

from typing import Any

import openai
import orjson
import treq
from twisted.internet import reactor
from twisted.internet.defer import FirstError
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from tests.gateway_harness import GatewayTestCase, OnPostgreSQL
from txgateway.translate.responses_to_chat import ChatToResponsesStream

WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}


def consume(stream: Any) -> list[Any]:
    return list(stream)


class NativeResponses(GatewayTestCase):
    async def test_plain_body_goes_as_is_and_usage_is_logged(self) -> None:
        response = await self.sdk(self.client.responses.create, model="gpt-4o", input="Hi")
        self.assertEqual(response.output_text, "Hello there!")
        [(path, _, body)] = self.fake.requests
        self.assertEqual(path, b"/v1/responses")
        self.assertEqual(body, {"model": "gpt-4o", "input": "Hi"})
        [record] = self.access_records()
        self.assertEqual((record["route"], record["status"], record["provider"]),
                         ("responses", 200, "fake"))
        self.assertEqual((record["input_tokens"], record["output_tokens"],
                          record["cached_input_tokens"], record["reasoning_tokens"]),
                         (21, 9, 5, 2))

    async def test_renamed_model(self) -> None:
        await self.sdk(self.client.responses.create, model="renamed", input="Hi")
        self.assertEqual(self.fake.requests[0][2]["model"], "upstream-name")

    async def test_stream_relayed_with_usage(self) -> None:
        stream = await self.sdk(self.client.responses.create, model="gpt-4o", input="Hi",
                                stream=True)
        events = await self.sdk(consume, stream)
        self.assertEqual(events[0].type, "response.created")
        self.assertEqual(events[-1].type, "response.completed")
        self.assertEqual("".join(e.delta for e in events
                                 if e.type == "response.output_text.delta"), "Hello there!")
        [record] = self.access_records()
        self.assertEqual((record["input_tokens"], record["output_tokens"]), (21, 9))
        self.assertFalse(record["usage_estimated"])

    async def test_follow_ups_reach_the_provider_that_made_it(self) -> None:
        first = await self.sdk(self.client.responses.create, model="gpt-4o", input="Hi")
        retrieved = await self.sdk(self.client.responses.retrieve, first.id)
        self.assertEqual(retrieved.id, first.id)
        items = await self.sdk(self.client.responses.input_items.list, first.id)
        self.assertEqual(items.data[0].content[0].text, "Hi")
        second = await self.sdk(self.client.responses.create, model="gpt-4o", input="More",
                                previous_response_id=first.id)
        self.assertEqual(self.fake.requests[-1][2]["previous_response_id"], first.id)
        self.assertEqual(second.previous_response_id, first.id)
        await self.sdk(self.client.responses.delete, first.id)
        self.assertEqual([method for method, _ in self.fake.stored_calls],
                         [b"GET", b"GET", b"DELETE"])
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.client.responses.retrieve, first.id)

    async def test_unknown_id_is_404(self) -> None:
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.client.responses.retrieve, "resp_nobody")
        self.assertEqual(self.fake.stored_calls, [])

    async def test_upstream_error_in_openai_shape(self) -> None:
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sdk(self.client.responses.create, model="error-400", input="Hi")
        self.assertEqual(caught.exception.code, "fake_400")


class TranslatedResponses(GatewayTestCase):
    async def test_plain_through_anthropic(self) -> None:
        response = await self.sdk(self.client.responses.create, model="claude-x",
                                  instructions="Be brief.", input="Hi",
                                  max_output_tokens=100, temperature=0.5)
        self.assertEqual(response.output_text, "Hello there!")
        self.assertEqual(response.status, "completed")
        self.assertEqual((response.usage.input_tokens, response.usage.output_tokens,
                          response.usage.input_tokens_details.cached_tokens), (32, 9, 7))
        [(_, _, body)] = self.claude.requests
        self.assertEqual(body["system"], "Be brief.")
        self.assertEqual(body["max_tokens"], 100)
        self.assertEqual(body["messages"][0]["role"], "user")
        [record] = self.access_records()
        self.assertEqual((record["provider"], record["input_tokens"], record["output_tokens"]),
                         ("claude", 32, 9))

    async def test_stream_event_sequence(self) -> None:
        stream = await self.sdk(self.client.responses.create, model="claude-x", input="Hi",
                                stream=True)
        events = await self.sdk(consume, stream)
        types = [event.type for event in events]
        self.assertEqual(types[:5], ["response.created", "response.in_progress",
                                     "response.output_item.added",
                                     "response.content_part.added",
                                     "response.output_text.delta"])
        self.assertEqual(types[-4:], ["response.output_text.done", "response.content_part.done",
                                      "response.output_item.done", "response.completed"])
        self.assertEqual([event.sequence_number for event in events], list(range(len(events))))
        self.assertEqual(events[-1].response.output_text, "Hello there!")
        self.assertEqual(events[-1].response.usage.output_tokens, 9)
        stored = await self.sdk(self.client.responses.retrieve, events[-1].response.id)
        self.assertEqual(stored.output_text, "Hello there!")
        [record] = self.access_records()
        self.assertEqual((record["input_tokens"], record["output_tokens"]), (32, 9))

    async def test_function_tools_round_trip(self) -> None:
        first = await self.sdk(self.client.responses.create, model="claude-x",
                               input="Weather in Paris?", tools=[WEATHER_TOOL])
        [call] = [item for item in first.output if item.type == "function_call"]
        self.assertEqual((call.name, orjson.loads(call.arguments)),
                         ("get_weather", {"city": "Paris"}))
        await self.sdk(self.client.responses.create, model="claude-x",
                       previous_response_id=first.id, tools=[WEATHER_TOOL],
                       input=[{"type": "function_call_output", "call_id": call.call_id,
                               "output": "sunny"}])
        messages = self.claude.requests[-1][2]["messages"]
        self.assertEqual([message["role"] for message in messages],
                         ["user", "assistant", "user"])
        tool_use = [block for block in messages[1]["content"] if block["type"] == "tool_use"]
        self.assertEqual(tool_use[0]["id"], call.call_id)
        self.assertEqual(messages[2]["content"][0]["type"], "tool_result")
        self.assertEqual(messages[2]["content"][0]["tool_use_id"], call.call_id)

    async def test_function_call_stream(self) -> None:
        stream = await self.sdk(self.client.responses.create, model="claude-x",
                                input="Weather?", tools=[WEATHER_TOOL], stream=True)
        events = await self.sdk(consume, stream)
        arguments = "".join(event.delta for event in events
                            if event.type == "response.function_call_arguments.delta")
        self.assertEqual(orjson.loads(arguments), {"city": "Paris"})
        [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
        self.assertEqual(done.name, "get_weather")
        self.assertEqual(events[-1].response.output[-1].type, "function_call")

    async def test_previous_response_chain_and_stored_api(self) -> None:
        first = await self.sdk(self.client.responses.create, model="claude-x",
                               input="My name is Ada.")
        second = await self.sdk(self.client.responses.create, model="claude-x",
                                input="What is my name?", previous_response_id=first.id)
        third = await self.sdk(self.client.responses.create, model="claude-x",
                               input="Again?", previous_response_id=second.id)
        self.assertEqual(third.previous_response_id, second.id)
        messages = self.claude.requests[-1][2]["messages"]
        self.assertEqual([message["role"] for message in messages],
                         ["user", "assistant", "user", "assistant", "user"])
        self.assertEqual(messages[0]["content"][0]["text"], "My name is Ada.")
        retrieved = await self.sdk(self.client.responses.retrieve, second.id)
        self.assertEqual(retrieved.output_text, "Hello there!")
        items = await self.sdk(self.client.responses.input_items.list, second.id)
        self.assertEqual([item.content[0].text for item in items.data], ["What is my name?"])
        await self.sdk(self.client.responses.delete, second.id)
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.client.responses.retrieve, second.id)
        with self.assertRaises(openai.BadRequestError):
            await self.sdk(self.client.responses.cancel, first.id)

    async def test_store_false_keeps_nothing(self) -> None:
        first = await self.sdk(self.client.responses.create, model="claude-x", input="Hi",
                               store=False)
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.client.responses.retrieve, first.id)

    async def test_demo_provider(self) -> None:
        response = await self.sdk(self.client.responses.create, model="demo", input="Hi")
        self.assertTrue(response.output_text)
        self.assertEqual(response.status, "completed")

    async def test_unsupported_tool_is_400(self) -> None:
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sdk(self.client.responses.create, model="claude-x", input="Hi",
                           tools=[{"type": "web_search"}])
        self.assertEqual(caught.exception.param, "tools")
        self.assertEqual(self.claude.requests, [])


class NativeResponsesOnPostgreSQL(OnPostgreSQL, NativeResponses):
    """The same, with which provider made each response kept in PostgreSQL."""


class TranslatedResponsesOnPostgreSQL(OnPostgreSQL, TranslatedResponses):
    """The same, with the responses the gateway made kept in PostgreSQL."""


class BadRequests(GatewayTestCase):
    async def check_400(self, body: bytes, param: str | None) -> None:
        response = await self.post("/v1/responses", body)
        self.assertEqual(response.code, 400)
        error = orjson.loads(await treq.content(response))["error"]
        self.assertEqual((error["type"], error["param"]), ("invalid_request_error", param))

    async def test_not_json(self) -> None:
        await self.check_400(b"{nope", None)

    async def test_no_model(self) -> None:
        await self.check_400(b'{"input": "Hi"}', "model")

    async def test_input_of_the_wrong_type(self) -> None:
        await self.check_400(b'{"model": "gpt-4o", "input": 5}', "input")


class TranslatorUnits(TestCase):
    def test_length_finish_is_incomplete(self) -> None:
        translator = ChatToResponsesStream({}, "resp_1", "m")
        chunk = {"id": "c", "choices": [{"index": 0, "delta": {"content": "a"},
                                         "finish_reason": "length"}]}
        translator.feed(b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n")
        assert translator.response is not None
        self.assertEqual(translator.response["status"], "incomplete")
        self.assertEqual(translator.response["incomplete_details"],
                         {"reason": "max_output_tokens"})


class ResponsesWireFidelity(GatewayTestCase):
    """What the openai SDK's Responses types require of translated answers."""

    async def test_cache_writes_in_usage(self) -> None:
        """
        ``input_tokens_details.cache_write_tokens`` is always there (the SDK marks it
        required); from Anthropic it is the cache-creation count, streamed or not.
        """
        answer = await self.sdk(self.client.responses.create, model="claude-x", input="Hi")
        stream = await self.sdk(self.client.responses.create, model="claude-x", input="Hi",
                                stream=True)
        streamed = (await self.sdk(consume, stream))[-1].response
        demo = await self.sdk(self.client.responses.create, model="demo", input="Hi")
        self.assertEqual([response.usage.input_tokens_details.cache_write_tokens
                          for response in (answer, streamed, demo)], [5, 5, 0])
        self.assertEqual(answer.usage.input_tokens, 32)
        # The access line and the ledger count them too, so the cost is not under-stated.
        records = self.access_records()
        self.assertEqual([r["cache_creation_input_tokens"] for r in records], [5, 5, 0])
        self.assertEqual(records[0]["cost_usd"], records[1]["cost_usd"])
        await self.ledger_written()
        rows = await self.service.gateway.store.usage_report("model")
        self.assertEqual({row["model"]: row["cache_creation_tokens"] for row in rows},
                         {"claude-x": 10, "demo": 0})

    async def test_mid_stream_error_is_numbered_next(self) -> None:
        """An upstream that breaks mid-stream: the ``error`` event takes the next number."""
        stream = await self.sdk(self.client.responses.create, model="claude-cut-stream",
                                input="Hi", stream=True)
        events = await self.sdk(consume, stream)
        self.assertEqual(events[-1].type, "error")
        self.assertEqual([event.sequence_number for event in events], list(range(len(events))))
        self.assertGreater(len(events), 2)


class StoringFails(GatewayTestCase):
    """A streamed response whose saving fails ends with an error event, not a hang."""

    async def _stream_while_saving(self, put_object: Any) -> list[dict[str, Any]]:
        self.patch(self.service.gateway.store, "put_object", put_object)
        response = await self.post("/v1/responses", orjson.dumps(
            {"model": "claude-x", "input": "Hi", "stream": True}), timeout=5)
        self.assertEqual(response.code, 200)
        body = await response.content()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError, FirstError)), 1)
        return [orjson.loads(line[6:]) for line in body.split(b"\n") if line[:6] == b"data: "]

    async def test_saving_raises(self) -> None:
        def put_object(*args: Any) -> Any:
            raise RuntimeError("the store broke")

        events = await self._stream_while_saving(put_object)
        self.assertEqual((events[-1]["type"], events[-1]["code"]), ("error", "store_failed"))
        self.assertEqual([event["sequence_number"] for event in events],
                         list(range(len(events))))
        [record] = self.access_records()
        self.assertEqual(record["status"], 500)

    async def test_saving_fails_later(self) -> None:
        def broke() -> None:
            raise RuntimeError("the store broke")

        def put_object(*args: Any) -> Any:
            return deferLater(reactor, 0.01, broke)

        events = await self._stream_while_saving(put_object)
        self.assertEqual((events[-1]["type"], events[-1]["code"]), ("error", "store_failed"))
