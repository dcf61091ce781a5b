"""
``/v1/conversations``, ``conversation`` in ``/v1/responses``, ``/v1/responses/input_tokens``
and ``/v1/responses/compact``: through a running gateway with the openai SDK, against the
fake OpenAI (native Responses) and the fake Anthropic (Responses translated through chat).
"""

from __future__ import annotations

from typing import Any

import openai
import orjson
import treq

from tests.fake_openai_responses import ENCRYPTED, INPUT_TOKENS
from tests.gateway_harness import CONFIG, GatewayTestCase, OnPostgreSQL
from txgateway.translate.responses_to_chat import COMPACTED, COMPACTION_PROMPT, COMPACTION_TAG

TEAM_KEY = "sk-team-conversations"
OTHER_KEY = "sk-other-conversations"
KEYS_CONFIG = CONFIG + f"""
keys:
  - name: team
    key: {TEAM_KEY}
  - name: other
    key: {OTHER_KEY}
"""

ADA = {"role": "user", "content": "My name is Ada."}


def consume(stream: Any) -> list[Any]:
    return list(stream)


def texts(items: list[Any]) -> list[str]:
    return [item["content"][0]["text"] if isinstance(item["content"], list)
            else item["content"] for item in items]


class ConversationObjects(GatewayTestCase):
    async def test_create_retrieve_update_delete(self) -> None:
        created = await self.sdk(self.client.conversations.create, items=[ADA],
                                 metadata={"topic": "names"})
        self.assertTrue(created.id.startswith("conv_"))
        self.assertEqual((created.object, created.metadata), ("conversation", {"topic": "names"}))
        retrieved = await self.sdk(self.client.conversations.retrieve, created.id)
        self.assertEqual(retrieved.model_dump(), created.model_dump())
        updated = await self.sdk(self.client.conversations.update, created.id,
                                 metadata={"topic": "people", "owner": "ada"})
        self.assertEqual(updated.metadata, {"topic": "people", "owner": "ada"})
        retrieved = await self.sdk(self.client.conversations.retrieve, created.id)
        self.assertEqual((retrieved.metadata, retrieved.created_at),
                         ({"topic": "people", "owner": "ada"}, created.created_at))
        deleted = await self.sdk(self.client.conversations.delete, created.id)
        self.assertEqual((deleted.id, deleted.object, deleted.deleted),
                         (created.id, "conversation.deleted", True))
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.client.conversations.retrieve, created.id)
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.client.conversations.items.list, created.id)
        store = self.service.gateway.store
        self.assertEqual(await store.list_objects(f"conversation_item:{created.id}", None,
                                                  None, 10), [])

    async def test_items_added_listed_in_pages_retrieved_and_deleted(self) -> None:
        conversation = await self.sdk(self.client.conversations.create, items=[
            {"type": "message", "role": "user", "content": f"first {n}"} for n in range(5)])
        added = await self.sdk(self.client.conversations.items.create, conversation.id, items=[
            {"role": "assistant", "content": "an answer"},
            {"type": "function_call", "call_id": "call_1", "name": "lookup",
             "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "found"}])
        self.assertEqual([item.type for item in added.data],
                         ["message", "function_call", "function_call_output"])
        self.assertEqual(added.data[0].content[0].type, "output_text")
        self.assertTrue(added.data[0].id.startswith("msg_"))
        self.assertEqual((added.first_id, added.last_id), (added.data[0].id, added.data[2].id))
        # The SDK follows has_more / last_id from page to page.
        pages = await self.sdk(self.client.conversations.items.list, conversation.id,
                               limit=3, order="asc")
        every = await self.sdk(lambda: list(pages))
        self.assertEqual([item.type for item in every], ["message"] * 6 + [
            "function_call", "function_call_output"])
        self.assertEqual([item.content[0].text for item in every[:5]],
                         [f"first {n}" for n in range(5)])
        self.assertTrue(pages.has_more)
        newest = await self.sdk(self.client.conversations.items.list, conversation.id, limit=2)
        self.assertEqual([item.type for item in newest.data],
                         ["function_call_output", "function_call"])
        item = await self.sdk(self.client.conversations.items.retrieve, added.data[1].id,
                              conversation_id=conversation.id)
        self.assertEqual((item.type, item.name, item.call_id), ("function_call", "lookup",
                                                                "call_1"))
        after = await self.sdk(self.client.conversations.items.delete, added.data[1].id,
                               conversation_id=conversation.id)
        self.assertEqual(after.id, conversation.id)
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.client.conversations.items.retrieve, added.data[1].id,
                           conversation_id=conversation.id)
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.client.conversations.items.delete, added.data[1].id,
                           conversation_id=conversation.id)
        left = await self.sdk(self.client.conversations.items.list, conversation.id,
                              limit=100)
        self.assertEqual(len(left.data), 7)
        self.assertFalse(left.has_more)

    async def check_400(self, path: str, body: Any, param: str | None) -> None:
        response = await self.post(path, orjson.dumps(body))
        self.assertEqual(response.code, 400)
        error = orjson.loads(await treq.content(response))["error"]
        self.assertEqual((error["type"], error["param"]), ("invalid_request_error", param))

    async def test_bad_input_is_400(self) -> None:
        await self.check_400("/v1/conversations", {"items": [ADA] * 21}, "items")
        await self.check_400("/v1/conversations",
                             {"metadata": {f"k{n}": "v" for n in range(17)}}, "metadata")
        await self.check_400("/v1/conversations", {"metadata": {"k": 5}}, "metadata")
        await self.check_400("/v1/conversations", {"metadata": {"k" * 65: "v"}}, "metadata")
        await self.check_400("/v1/conversations", {"items": [{"role": "robot",
                                                              "content": "hi"}]}, "items")
        await self.check_400("/v1/conversations", {"items": "hi"}, "items")
        conversation = await self.sdk(self.client.conversations.create)
        await self.check_400(f"/v1/conversations/{conversation.id}/items",
                             {"items": [ADA] * 21}, "items")
        await self.check_400(f"/v1/conversations/{conversation.id}", {}, "metadata")
        response = await treq.get(f"{self.base_url}/v1/conversations/{conversation.id}"
                                  "/items?limit=500", pool=self.pool)
        self.assertEqual(response.code, 400)
        self.assertEqual(orjson.loads(await treq.content(response))["error"]["param"],
                         "limit")
        items = await self.sdk(self.client.conversations.items.list, conversation.id)
        self.assertEqual(items.data, [])

    async def test_unknown_conversation_is_404(self) -> None:
        with self.assertRaises(openai.NotFoundError) as caught:
            await self.sdk(self.client.conversations.retrieve, "conv_nobody")
        self.assertIn("conv_nobody", caught.exception.message)
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.client.conversations.items.create, "conv_nobody", items=[ADA])
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(self.client.conversations.delete, "conv_nobody")


class KeyIsolation(GatewayTestCase):
    config = KEYS_CONFIG

    def client_for(self, key: str) -> openai.OpenAI:
        client = openai.OpenAI(base_url=self.base_url + "/v1", api_key=key, max_retries=0)
        self.addCleanup(client.close)
        return client

    async def test_a_conversation_is_its_keys_alone(self) -> None:
        team, other = self.client_for(TEAM_KEY), self.client_for(OTHER_KEY)
        conversation = await self.sdk(team.conversations.create, items=[ADA])
        for call, kwargs in ((other.conversations.retrieve, {}),
                             (other.conversations.items.list, {}),
                             (other.conversations.items.create, {"items": [ADA]}),
                             (other.conversations.update, {"metadata": {"a": "b"}}),
                             (other.conversations.delete, {})):
            with self.assertRaises(openai.NotFoundError):
                await self.sdk(call, conversation.id, **kwargs)
        with self.assertRaises(openai.NotFoundError):
            await self.sdk(other.responses.create, model="gpt-4o", input="Hi",
                           conversation=conversation.id)
        self.assertEqual(self.fake.requests, [])
        with self.assertRaises(openai.AuthenticationError):
            await self.sdk(self.client_for("sk-wrong").conversations.retrieve, conversation.id)
        items = await self.sdk(team.conversations.items.list, conversation.id)
        self.assertEqual(len(items.data), 1)

    async def test_references_reach_the_keys_own_items_only(self) -> None:
        team, other = self.client_for(TEAM_KEY), self.client_for(OTHER_KEY)
        first = await self.sdk(team.responses.create, model="claude-x", input="Hi")
        reference = {"type": "item_reference", "id": first.output[0].id}
        with self.assertRaises(openai.BadRequestError):
            await self.sdk(other.responses.create, model="claude-x", input=[reference])
        await self.sdk(other.responses.create, model="gpt-4o", input=[reference])
        self.assertEqual(self.fake.requests[0][2]["input"], [reference])
        await self.sdk(team.responses.create, model="claude-x", input=[reference])
        self.assertEqual(self.claude.requests[-1][2]["messages"][0]["role"], "assistant")


class ConversationTurns(GatewayTestCase):
    """Each turn sees the conversation's items, and adds its input and output to them."""

    async def converse(self, model: str, stream: bool) -> tuple[str, list[Any]]:
        conversation = await self.sdk(self.client.conversations.create, items=[ADA])
        answers = []
        for question, reference in (("What is my name?", conversation.id),
                                    ("Again?", {"id": conversation.id})):
            if stream:
                events = await self.sdk(consume, await self.sdk(
                    self.client.responses.create, model=model, input=question,
                    conversation=reference, stream=True))
                self.assertEqual(events[-1].type, "response.completed")
                self.assertEqual(events[0].response.conversation.id, conversation.id)
                answer = events[-1].response
            else:
                answer = await self.sdk(self.client.responses.create, model=model,
                                        input=question, conversation=reference)
            self.assertEqual(answer.conversation.id, conversation.id)
            self.assertEqual(answer.output_text, "Hello there!")
            answers.append(answer)
        items = await self.sdk(self.client.conversations.items.list, conversation.id,
                               order="asc")
        self.assertEqual([(item.role, item.content[0].text) for item in items.data], [
            ("user", "My name is Ada."), ("user", "What is my name?"),
            ("assistant", "Hello there!"), ("user", "Again?"), ("assistant", "Hello there!")])
        self.assertEqual(items.data[2].id, answers[0].output[0].id)
        return conversation.id, answers

    async def check_native(self, stream: bool) -> None:
        await self.converse("gpt-4o", stream)
        [first, second] = [body for path, _, body in self.fake.requests]
        for body in (first, second):
            self.assertNotIn("conversation", body)
            self.assertNotIn("previous_response_id", body)
        self.assertEqual(texts(second["input"]), ["My name is Ada.", "What is my name?",
                                                  "Hello there!", "Again?"])
        self.assertNotIn("id", second["input"][0])
        self.assertEqual(second["input"][2]["role"], "assistant")

    async def test_native(self) -> None:
        await self.check_native(stream=False)

    async def test_native_stream(self) -> None:
        await self.check_native(stream=True)

    async def check_translated(self, stream: bool) -> None:
        await self.converse("claude-x", stream)
        messages = self.claude.requests[-1][2]["messages"]
        self.assertEqual([(message["role"], message["content"][0]["text"])
                          for message in messages],
                         [("user", "My name is Ada."), ("user", "What is my name?"),
                          ("assistant", "Hello there!"), ("user", "Again?")])

    async def test_translated(self) -> None:
        await self.check_translated(stream=False)

    async def test_translated_stream(self) -> None:
        await self.check_translated(stream=True)

    async def test_a_failed_turn_adds_nothing(self) -> None:
        conversation = await self.sdk(self.client.conversations.create, items=[ADA])
        with self.assertRaises(openai.BadRequestError):
            await self.sdk(self.client.responses.create, model="error-400", input="Hi",
                           conversation=conversation.id)
        items = await self.sdk(self.client.conversations.items.list, conversation.id)
        self.assertEqual(len(items.data), 1)

    async def test_with_previous_response_id_is_400(self) -> None:
        conversation = await self.sdk(self.client.conversations.create)
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sdk(self.client.responses.create, model="gpt-4o", input="Hi",
                           conversation=conversation.id, previous_response_id="resp_1")
        self.assertEqual(caught.exception.param, "conversation")
        self.assertIn("Mutually exclusive", caught.exception.message)
        self.assertEqual(self.fake.requests, [])

    async def test_unknown_conversation_is_404(self) -> None:
        for model in ("gpt-4o", "claude-x"):
            with self.assertRaises(openai.NotFoundError) as caught:
                await self.sdk(self.client.responses.create, model=model, input="Hi",
                               conversation="conv_nobody")
            self.assertEqual(caught.exception.param, "conversation")
        self.assertEqual((self.fake.requests, self.claude.requests), ([], []))
        response = await self.post("/v1/responses", b'{"model": "gpt-4o", "input": "Hi", '
                                   b'"conversation": 5}')
        self.assertEqual(response.code, 400)


class ItemReferences(GatewayTestCase):
    """``item_reference`` input items name items the gateway holds, or the upstream does."""

    def reference(self, item_id: str) -> dict[str, str]:
        return {"type": "item_reference", "id": item_id}

    async def test_items_of_a_stored_response_without_its_chain(self) -> None:
        first = await self.sdk(self.client.responses.create, model="claude-x",
                               input="My name is Ada.")
        [asked] = (await self.sdk(self.client.responses.input_items.list, first.id)).data
        question = {"role": "user", "content": "What is my name?"}
        # Typed or not (the type may be left out), to a translated or a native model.
        second = await self.sdk(self.client.responses.create, model="claude-x", input=[
            self.reference(asked.id), {"id": first.output[0].id}, question])
        await self.sdk(self.client.responses.create, model="gpt-4o", input=[
            self.reference(asked.id), self.reference(first.output[0].id), question])
        messages = self.claude.requests[-1][2]["messages"]
        self.assertEqual([(message["role"], message["content"][0]["text"])
                          for message in messages],
                         [("user", "My name is Ada."), ("assistant", "Hello there!"),
                          ("user", "What is my name?")])
        sent = self.fake.requests[-1][2]["input"]
        self.assertEqual(texts(sent), ["My name is Ada.", "Hello there!", "What is my name?"])
        self.assertEqual([item.get("id") for item in sent], [None, None, None])
        # The resolved items are new input items, with ids of their own.
        inputs = (await self.sdk(self.client.responses.input_items.list, second.id,
                                 order="asc")).data
        self.assertEqual([item.content[0].text for item in inputs],
                         ["My name is Ada.", "Hello there!", "What is my name?"])
        self.assertNotIn(asked.id, [item.id for item in inputs])
        # A deleted response's items are gone with it.
        await self.sdk(self.client.responses.delete, first.id)
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sdk(self.client.responses.create, model="claude-x",
                           input=[self.reference(asked.id), question])
        self.assertEqual(caught.exception.param, "input")
        self.assertIn(asked.id, caught.exception.message)
        self.assertEqual(len(self.claude.requests), 2)

    async def test_items_of_the_conversation(self) -> None:
        conversation = await self.sdk(self.client.conversations.create, items=[
            ADA, {"role": "assistant", "content": "Hello Ada."}])
        [ada, _] = (await self.sdk(self.client.conversations.items.list, conversation.id,
                                   order="asc")).data
        for model in ("claude-x", "gpt-4o"):
            await self.sdk(self.client.responses.create, model=model,
                           conversation=conversation.id, input=[
                               self.reference(ada.id), {"role": "user", "content": "Again?"}])
        [(_, _, native)] = self.fake.requests
        self.assertEqual(texts(native["input"]), [
            "My name is Ada.", "Hello Ada.",  # the conversation
            "My name is Ada.", "Again?", "Hello there!",  # claude-x's turn
            "My name is Ada.", "Again?"])  # this turn
        self.assertNotIn("item_reference", orjson.dumps(native).decode())
        messages = self.claude.requests[-1][2]["messages"]
        self.assertEqual([message["content"][0]["text"] for message in messages],
                         ["My name is Ada.", "Hello Ada.", "My name is Ada.", "Again?"])
        items = (await self.sdk(self.client.conversations.items.list, conversation.id,
                                order="asc", limit=100)).data
        self.assertEqual(len(items), 2 + 3 + 3)
        self.assertEqual(len({item.id for item in items}), 8)

    async def test_unknown_references_go_to_a_native_model_and_are_400_for_others(self) -> None:
        upstream = self.reference("msg_upstream_held")
        await self.sdk(self.client.responses.create, model="gpt-4o", input=[upstream, ADA])
        self.assertEqual(self.fake.requests[0][2]["input"], [upstream, ADA])
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sdk(self.client.responses.create, model="claude-x",
                           input=[upstream, ADA])
        self.assertEqual(caught.exception.param, "input")
        self.assertIn("msg_upstream_held", caught.exception.message)
        self.assertEqual(self.claude.requests, [])


class InputTokens(GatewayTestCase):
    async def test_native_is_forwarded_with_the_history(self) -> None:
        conversation = await self.sdk(self.client.conversations.create, items=[ADA])
        counted = await self.sdk(self.client.responses.input_tokens.count, model="renamed",
                                 input="What is my name?", conversation=conversation.id)
        self.assertEqual((counted.object, counted.input_tokens),
                         ("response.input_tokens", INPUT_TOKENS))
        [(path, _, body)] = self.fake.requests
        self.assertEqual(path, b"/v1/responses/input_tokens")
        self.assertEqual(body["model"], "upstream-name")
        self.assertNotIn("conversation", body)
        self.assertEqual(texts(body["input"]), ["My name is Ada.", "What is my name?"])
        [record] = self.access_records()
        self.assertEqual((record["route"], record["status"]), ("responses_input_tokens", 200))

    async def test_translated_is_estimated_with_the_history(self) -> None:
        alone = await self.sdk(self.client.responses.input_tokens.count, model="claude-x",
                               input="What is my name?")
        first = await self.sdk(self.client.responses.create, model="claude-x",
                               input="My name is Ada. " * 50)
        chained = await self.sdk(self.client.responses.input_tokens.count, model="claude-x",
                                 input="What is my name?", previous_response_id=first.id)
        conversation = await self.sdk(self.client.conversations.create,
                                      items=[{"role": "user", "content": "Ada? " * 100}])
        held = await self.sdk(self.client.responses.input_tokens.count, model="claude-x",
                              input="What is my name?", conversation=conversation.id)
        self.assertEqual(alone.input_tokens, 4)  # 16 bytes of text
        self.assertGreater(chained.input_tokens, alone.input_tokens + 190)
        self.assertEqual(held.input_tokens, alone.input_tokens + 125)
        self.assertEqual(len(self.claude.requests), 1)  # only the response made

    async def test_untranslatable_is_400(self) -> None:
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sdk(self.client.responses.input_tokens.count, model="claude-x",
                           input="Hi", tools=[{"type": "web_search"}])
        self.assertEqual(caught.exception.param, "tools")


class Compaction(GatewayTestCase):
    CONVERSATION = [ADA, {"role": "assistant", "content": "Hello Ada."},
                    {"role": "user", "content": "Plan a trip to Paris."}]

    async def test_native_is_forwarded(self) -> None:
        compacted = await self.sdk(self.client.responses.compact, model="gpt-4o",
                                   input=self.CONVERSATION)
        self.assertEqual(compacted.object, "response.compaction")
        self.assertEqual([item.type for item in compacted.output],
                         ["message", "message", "compaction"])
        self.assertEqual(compacted.output[-1].encrypted_content, ENCRYPTED)
        [(path, _, body)] = self.fake.requests
        self.assertEqual((path, body["input"]), (b"/v1/responses/compact", self.CONVERSATION))
        [record] = self.access_records()
        self.assertEqual((record["route"], record["input_tokens"]), ("responses_compact", 21))

    async def test_translated_summarises_and_the_summary_comes_back_as_context(self) -> None:
        compacted = await self.sdk(self.client.responses.compact, model="claude-x",
                                   instructions="Be brief.", input=self.CONVERSATION)
        self.assertEqual(compacted.object, "response.compaction")
        self.assertEqual([(item.type, getattr(item, "role", None))
                          for item in compacted.output],
                         [("message", "user"), ("message", "user"), ("compaction", None)])
        self.assertEqual(compacted.output[1].content[0].text, "Plan a trip to Paris.")
        self.assertEqual((compacted.usage.input_tokens, compacted.usage.output_tokens),
                         (32, 9))
        [(_, _, asked)] = self.claude.requests
        self.assertEqual(asked["system"], "Be brief.")
        self.assertEqual([message["role"] for message in asked["messages"]],
                         ["user", "assistant", "user", "user"])
        self.assertEqual(asked["messages"][-1]["content"][0]["text"], COMPACTION_PROMPT)
        # The compacted window, sent back with a new question, reaches the model as context.
        # (The SDK's output item types know no user messages: hence warnings=False.)
        window = [item.model_dump(exclude_none=True, warnings=False)
                  for item in compacted.output]
        await self.sdk(self.client.responses.create, model="claude-x", input=[
            *window, {"role": "user", "content": "And the hotel?"}])
        sent = self.claude.requests[-1][2]
        self.assertIn("compacted", sent["system"])
        self.assertIn("Hello there!", sent["system"])  # the fake model's summary
        self.assertEqual([message["content"][0]["text"] for message in sent["messages"]],
                         ["My name is Ada.", "Plan a trip to Paris.", "And the hotel?"])
        [record] = [r for r in self.access_records() if r["route"] == "responses_compact"]
        self.assertEqual((record["provider"], record["output_tokens"]), ("claude", 9))

    async def test_the_gateways_compaction_reaches_a_native_model_as_what_it_means(self) -> None:
        compacted = await self.sdk(self.client.responses.compact, model="claude-x",
                                   input=self.CONVERSATION)
        window = [item.model_dump(exclude_none=True, warnings=False)
                  for item in compacted.output]
        question = {"role": "user", "content": "And the hotel?"}
        await self.sdk(self.client.responses.create, model="gpt-4o", input=[*window, question])
        # In a conversation, the compaction item comes back from the store as history.
        conversation = await self.sdk(self.client.conversations.create, items=window)
        await self.sdk(self.client.responses.create, model="gpt-4o", input="And the hotel?",
                       conversation=conversation.id, stream=True)
        summary = {"type": "message", "role": "developer",
                   "content": COMPACTED + "Hello there!"}  # the fake model's summary
        for path, _, sent in self.fake.requests:
            self.assertEqual(path, b"/v1/responses")
            self.assertEqual([item["role"] for item in sent["input"]],
                             ["user", "user", "developer", "user"])
            self.assertEqual(sent["input"][2], summary)
            self.assertEqual(texts(sent["input"][:2]), ["My name is Ada.",
                                                        "Plan a trip to Paris."])
            self.assertEqual(texts(sent["input"][3:]), ["And the hotel?"])
        self.assertEqual(len(self.fake.requests), 2)

    async def test_the_gateways_compaction_is_compacted_again_natively(self) -> None:
        compacted = await self.sdk(self.client.responses.compact, model="claude-x",
                                   input=self.CONVERSATION)
        await self.sdk(self.client.responses.compact, model="gpt-4o", input=[
            compacted.output[-1].model_dump(exclude_none=True), ADA])
        [(path, _, sent)] = self.fake.requests
        self.assertEqual(path, b"/v1/responses/compact")
        self.assertEqual(sent["input"], [{"type": "message", "role": "developer",
                                          "content": COMPACTED + "Hello there!"}, ADA])

    async def test_a_damaged_compaction_of_the_gateways_is_400_for_a_native_model(self) -> None:
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sdk(self.client.responses.create, model="gpt-4o", input=[
                {"type": "compaction", "encrypted_content": COMPACTION_TAG + "%%%"}, ADA])
        self.assertEqual(caught.exception.param, "input")
        self.assertEqual(self.fake.requests, [])

    async def test_a_foreign_compaction_item_goes_to_a_native_model_as_is(self) -> None:
        foreign = {"type": "compaction", "encrypted_content": ENCRYPTED}
        await self.sdk(self.client.responses.create, model="gpt-4o", input=[foreign, ADA])
        self.assertEqual(self.fake.requests[0][2]["input"], [foreign, ADA])

    async def test_a_foreign_compaction_item_is_400_for_a_translated_model(self) -> None:
        with self.assertRaises(openai.BadRequestError) as caught:
            await self.sdk(self.client.responses.create, model="claude-x", input=[
                {"type": "compaction", "encrypted_content": ENCRYPTED}, ADA])
        self.assertEqual(caught.exception.param, "input")
        self.assertEqual(self.claude.requests, [])


class ConversationObjectsOnPostgreSQL(OnPostgreSQL, ConversationObjects):
    """The same, with the conversations in PostgreSQL."""


class KeyIsolationOnPostgreSQL(OnPostgreSQL, KeyIsolation):
    """The same, with the conversations in PostgreSQL."""


class ConversationTurnsOnPostgreSQL(OnPostgreSQL, ConversationTurns):
    """The same, with the conversations in PostgreSQL."""


class ItemReferencesOnPostgreSQL(OnPostgreSQL, ItemReferences):
    """The same, with the items in PostgreSQL."""


class InputTokensOnPostgreSQL(OnPostgreSQL, InputTokens):
    """The same, with the conversations and responses in PostgreSQL."""


class CompactionOnPostgreSQL(OnPostgreSQL, Compaction):
    """The same, with the responses in PostgreSQL."""
