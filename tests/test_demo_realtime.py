"""
The demo realtime server as third-party clients see it: the Agents SDK's realtime agent (which
validates every server event against the GA types), and the openai SDK's beta client.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import openai
import orjson
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from pydantic import Field, TypeAdapter
from twisted.internet.threads import deferToThread

from tests.fake_realtime import AUDIO_FRAME
from tests.realtime_harness import RealtimeTestCase

BETA_EVENTS: TypeAdapter[Any] = TypeAdapter(
    Annotated[BetaServerEvent, Field(discriminator="type")])


def beta_checked(frame: bytes) -> dict[str, Any]:
    """An event as validated: the beta types name their session models in a closed list."""
    event = orjson.loads(frame)
    if "session" in event:
        event["session"].pop("model")
    return event


def agent_turn(url: str) -> tuple[list[Any], list[dict[str, Any]]]:
    """
    A typed turn, then spoken input, with the Agents SDK's realtime runner; the session
    events, and every raw server event the model saw, up to the answer to the
    ``conversation.item.retrieve`` the SDK sends after the transcription.
    """
    from agents.realtime import RealtimeAgent, RealtimeRunner

    async def run() -> tuple[list[Any], list[dict[str, Any]]]:
        runner = RealtimeRunner(RealtimeAgent(name="demo", instructions="Be brief."))
        session = await runner.run(model_config={
            "url": url, "api_key": "sk-caller",
            "initial_model_settings": {"input_audio_transcription": {"model": "demo"}}})
        events: list[Any] = []
        raw: list[dict[str, Any]] = []
        async with session:
            await session.send_message("Hello there")
            async for event in session:
                events.append(event)
                if event.type == "raw_model_event" and event.data.type == "raw_server_event":
                    raw.append(event.data.data)
                    if raw[-1]["type"] in ("conversation.item.retrieved", "error"):
                        break
                if event.type == "agent_end":
                    await session.send_audio(AUDIO_FRAME * 50, commit=True)
        return events, raw

    return asyncio.run(run())


def beta_turn(base_url: str) -> list[Any]:
    """A text turn over the openai SDK's beta realtime client (``OpenAI-Beta: realtime=v1``)."""

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-caller",
                                    websocket_base_url=base_url.replace("http", "ws"))
        raw: list[Any] = []
        async with client.beta.realtime.connect(model="demo") as connection:
            await connection.session.update(session={"modalities": ["text"]})
            await connection.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "Hi"}]})
            for response in ({}, {"modalities": ["text", "audio"]}):
                await connection.response.create(response=response)
                raw.append(await connection.recv_bytes())
                while b'"response.done"' not in raw[-1]:
                    raw.append(await connection.recv_bytes())
        await client.close()
        return raw

    return asyncio.run(run())


class DemoRealtimeTests(RealtimeTestCase):
    async def test_agents_sdk_sees_no_errors(self) -> None:
        """
        The Agents SDK's realtime agent on the demo: every server event validates (content
        parts typed "text"/"audio"), the assistant's item arrives as conversation.item.added
        and .done, and the retrieve it sends after each transcription is answered.
        """
        events, raw = await deferToThread(
            agent_turn, f"ws://127.0.0.1:{self.port}/v1/realtime?model=demo")
        errors = [event for event in events if event.type == "error"]
        self.assertEqual(errors, [])
        kinds = [event["type"] for event in raw]
        self.assertIn("conversation.item.input_audio_transcription.completed", kinds)
        self.assertEqual(kinds[-1], "conversation.item.retrieved")
        [response] = [e["response"] for e in raw if e["type"] == "response.done"]
        [assistant] = response["output"]
        self.assertEqual(
            [(e["type"], e["item"]["status"]) for e in raw
             if e["type"] in ("conversation.item.added", "conversation.item.done")
             and e["item"]["id"] == assistant["id"]],
            [("conversation.item.added", "in_progress"), ("conversation.item.done", "completed")])
        parts = [e["part"]["type"] for e in raw if e["type"].startswith("response.content_part")]
        self.assertEqual(parts, ["audio", "audio"])
        self.assertEqual(assistant["content"][0]["type"], "output_audio")
        self.assertEqual(raw[-1]["item"], assistant)

    async def test_beta_session_gets_beta_events(self) -> None:
        """
        A beta client gets the beta session shape and event names, and its ``modalities``
        is obeyed: text only, then text and audio; every event is a valid beta event.
        """
        raw = await deferToThread(beta_turn, self.base_url + "/v1")
        events = [BETA_EVENTS.validate_python(beta_checked(frame)) for frame in raw]
        kinds = [event.type for event in events]
        self.assertEqual(events[0].type, "session.created")
        self.assertEqual(events[0].session.input_audio_format, "pcm16")
        self.assertEqual(events[1].session.modalities, ["text"])
        first = kinds[:kinds.index("response.done") + 1]
        self.assertIn("response.text.delta", first)
        self.assertIn("conversation.item.created", first)
        self.assertNotIn("response.audio.delta", first)
        second = kinds[len(first):]
        self.assertIn("response.audio.delta", second)
        self.assertIn("response.audio_transcript.done", second)
        ga_only = {"conversation.item.added", "conversation.item.done",
                   "response.output_text.delta", "response.output_audio.delta"}
        self.assertEqual(ga_only & set(kinds), set())
        done = [event.response for event in events if event.type == "response.done"]
        self.assertEqual([r.modalities for r in done], [["text"], ["text", "audio"]])
        self.assertEqual([r.output[0].content[0].type for r in done], ["text", "audio"])
