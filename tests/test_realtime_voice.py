"""
Translation and Live sessions, and the billing edge cases of issue 14 item 5, through real
sockets against the fake's wire formats: duration-billed sessions are one ledger record of
their model, a Live session's cumulative usage replaces (never adds), audio after the last
transcript is billed, a budget is checked at each ``response.create``, usage arriving after
the caller left is still recorded, and an upstream close reaches the caller with its code.
"""

from __future__ import annotations

import asyncio
from typing import Any

import attrs
import openai
import orjson
import treq
from twisted.internet.threads import deferToThread

from tests.fake_realtime import CANCELLED_USAGE, DURATION_USAGE, USAGE
from tests.realtime_harness import CONFIG, RealtimeTestCase, until
from tests.test_realtime import AUDIO, refused
from tests.test_realtime_keys import KEYS_CONFIG
from txgateway.pricing import SHIPPED_PRICES

VOICE_CONFIG = CONFIG + """
  - name: gpt-realtime-translate
    provider: fake
  - name: whisper-1
    provider: fake
  - name: live-voice
    provider: fake
    model: gpt-live
prices:
  gpt-live: {{per_second: 0.002, paused_per_second: 0.001}}
"""


def sdk_translation(base_url: str, seconds: int) -> list[Any]:
    """With the openai SDK: ``seconds`` one-second appends, then a graceful close."""

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-caller")
        seen = []
        async with client.realtime.translations.connect(
                model="gpt-realtime-translate") as connection:
            for _ in range(seconds):
                await connection.session.input_audio_buffer.append(audio=AUDIO)
            await connection.session.close()
            async for event in connection:
                seen.append(event)
                if event.type == "session.closed":
                    break
        await client.close()
        return seen

    return asyncio.run(run())


class VoiceTestCase(RealtimeTestCase):
    config = VOICE_CONFIG
    #: The SDK runs in a thread: slow on a loaded machine.
    timeout = 45

    async def rows(self) -> dict[str, dict[str, Any]]:
        """The ledger's rows by model once every session has ended."""
        gateway = self.service.gateway
        await until(lambda: not gateway.realtime.active() and not gateway.ledger.pending)
        return {row["model"]: row for row in await gateway.store.usage_report("model")}



class TranslationTests(VoiceTestCase):
    async def test_a_translation_session_is_billed_by_the_second_of_audio(self) -> None:
        events = await deferToThread(sdk_translation, self.base_url + "/v1", 3)
        kinds = [event.type for event in events]
        self.assertEqual(kinds.count("session.output_transcript.delta"), 3)
        self.assertEqual(kinds.count("session.input_transcript.delta"), 3)
        self.assertEqual(kinds.count("session.output_audio.delta"), 3)
        self.assertEqual(kinds[-1], "session.closed")
        [handshake] = self.fake.handshakes
        self.assertEqual((handshake.path, handshake.params["model"]),
                         ("/v1/realtime/translations", ["gpt-realtime-translate"]))
        self.assertEqual(handshake.headers["authorization"], "Bearer sk-upstream-secret")

        [row] = (await self.rows()).values()
        self.assertEqual((row["model"], row["requests"], row["audio_seconds"]),
                         ("gpt-realtime-translate", 1, 3.0))
        self.assertAlmostEqual(row["cost_usd"], 3 * SHIPPED_PRICES[
            "gpt-realtime-translate"].per_second, places=12)
        self.assertEqual((row["input_tokens"], row["output_tokens"]), (0, 0))
        _, sessions = await self.admin("/admin/realtime/sessions")
        [session] = sessions["recent"]
        self.assertEqual((session["intent"], session["responses"], session["audio_seconds_in"],
                          session["audio_seconds_out"]), ("translation", 0, 3.0, 3.0))
        [record] = [r for r in self.access_records() if r.get("route") == "realtime"]
        self.assertEqual(record["upstream_close_code"], 1000)

    async def test_an_upstream_close_reaches_the_caller_with_its_code(self) -> None:
        client = await self.connect("model=gpt-realtime-translate",
                                    path="/v1/realtime/translations")
        await client.next("session.created")
        client.send_event(type="test.close")
        was_clean, code, reason = await self.clients[-1][1].closed
        self.assertEqual((code, reason), (4321, "fake says bye"))


def sdk_live(base_url: str) -> list[Any]:
    """With the openai SDK: a Live session started, two usage reports, then closed."""

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-caller")
        seen = []
        async with client.live.connect() as connection:
            await connection.session.start(session={"model": "gpt-live-1.1"})
            for usage in ({"seconds": 3}, {"seconds": 10, "paused_seconds": 4}):
                await connection.send({"type": "test.usage", **usage})  # type: ignore
            await connection.session.close()
            async for event in connection:
                seen.append(event)
                if event.type == "session.closed":
                    break
        await client.close()
        return seen

    return asyncio.run(run())


class LiveTests(VoiceTestCase):
    realtime = "{live_model: live-voice}"

    async def test_live_usage_is_cumulative_and_billed_per_second(self) -> None:
        """
        Through the SDK (which names its model only in ``session.start``): the usage reports
        are totals, so the session is billed for the last one, its paused part at its rate.
        """
        events = await deferToThread(sdk_live, self.base_url + "/v1")
        kinds = [event.type for event in events]
        self.assertEqual(kinds, ["session.started", "session.usage.updated",
                                 "session.usage.updated", "session.closed"])
        self.assertEqual(events[-1].usage.paused_seconds, 4)
        # The routed model is the one started upstream, whatever the caller named.
        self.assertEqual(self.fake.received[0]["session"]["model"], "gpt-live")
        self.assertEqual(self.fake.handshakes[0].path, "/v1/live/sessions")

        [row] = (await self.rows()).values()
        self.assertEqual((row["model"], row["audio_seconds"]), ("live-voice", 10))
        self.assertAlmostEqual(row["cost_usd"], 6 * 0.002 + 4 * 0.001, places=12)
        _, sessions = await self.admin("/admin/realtime/sessions")
        usage = sessions["recent"][0]["usage"]
        self.assertEqual((usage["live_seconds"], usage["live_paused_seconds"]), (10, 4))
        metrics = await self.metrics()
        for state, seconds in (("active", 6.0), ("paused", 4.0)):
            self.assertIn('txgateway_realtime_live_seconds_total{model="live-voice",'
                          f'provider="openai",state="{state}"}} {seconds}', metrics)

    async def test_a_live_session_named_in_the_query(self) -> None:
        client = await self.connect("model=live-voice", path="/v1/live/sessions")
        client.send_event(type="session.start", session={"model": "live-voice"})
        started = await client.next("session.started")
        self.assertEqual(started["session"]["model"], "gpt-live")
        client.send_event(type="test.usage", seconds=7.5)
        await client.next("session.usage.updated")
        _, sessions = await self.admin("/admin/realtime/sessions")
        [live] = sessions["active"]
        self.assertEqual((live["intent"], live["usage"]["live_seconds"]), ("live", 7.5))
        client.send_event(type="session.close")
        await client.next("session.closed")
        await self.clients[-1][1].closed
        [row] = (await self.rows()).values()
        self.assertEqual(row["audio_seconds"], 7.5)


class TrailingAudioTests(VoiceTestCase):
    async def test_audio_after_the_last_transcript_is_billed(self) -> None:
        """
        A whisper transcription session whose last four seconds are never transcribed before
        the close: it is billed for the five seconds sent, not the 2.5 the provider reported.
        """
        client = await self.connect("intent=transcription&model=whisper-1")
        await client.next("session.created")
        client.send_event(type="session.update", session={
            "type": "transcription", "audio": {"input": {"transcription": {
                "model": "whisper-1"}}}})
        await client.next("session.updated")
        client.send_event(type="input_audio_buffer.append", audio=AUDIO)
        client.send_event(type="input_audio_buffer.commit")
        completed = await client.next("conversation.item.input_audio_transcription.completed")
        self.assertEqual(completed["usage"], DURATION_USAGE)
        for _ in range(4):
            client.send_event(type="input_audio_buffer.append", audio=AUDIO)
        await until(lambda: len(self.fake.received) == 7)
        client.sendClose(1000)
        await self.clients[-1][1].closed
        row = (await self.rows())["whisper-1"]
        self.assertEqual(row["audio_seconds"], 5.0)
        self.assertAlmostEqual(row["cost_usd"], 5 * SHIPPED_PRICES["whisper-1"].per_second,
                               places=12)


class CallerLeavesTests(VoiceTestCase):
    async def test_usage_arriving_after_the_caller_left_is_recorded(self) -> None:
        """
        The caller closes while a response plays: the upstream is kept until that response's
        ``response.done``, whose usage reaches the ledger, and is then closed with the
        caller's code.
        """
        self.fake.delay = 0.1
        client = await self.connect()
        await client.next("session.created")
        client.send_event(type="response.create")
        await client.next("response.created")
        client.sendClose(1000)
        await self.clients[-1][1].closed
        await until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes[0][1], 1000)
        row = (await self.rows())["voice"]
        self.assertEqual((row["input_tokens"], row["output_tokens"]),
                         (USAGE["input_tokens"], USAGE["output_tokens"]))
        self.assertEqual(row["errors"], 0)

    async def test_a_response_never_done_is_closed_after_the_drain_timeout(self) -> None:
        book = self.service.gateway.realtime
        book.settings = attrs.evolve(book.settings, drain_timeout=0.2)
        self.fake.delay = 60
        client = await self.connect()
        await client.next("session.created")
        client.send_event(type="response.create")
        await client.next("response.created")
        client.sendClose(1000)
        await until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes[0][1], 1000)
        [ended] = book.recent()
        self.assertEqual(len(ended.tally.unterminated), 1)


class BudgetTests(RealtimeTestCase):
    config = KEYS_CONFIG

    async def test_the_key_budget_is_checked_at_every_response_create(self) -> None:
        """
        The first response crosses the key's budget; the next ``response.create`` is not
        relayed, the session is cut with 1008, and both responses' usage (one cancelled) is
        billed as the provider reported it.
        """
        self.fake.delay = 0.05
        client = await self.connect(headers={"Authorization": "Bearer sk-broke"})
        await client.next("session.created")
        client.send_event(type="response.create")
        await client.next("response.output_audio.delta")
        client.send_event(type="response.cancel")
        cancelled = await client.next("response.done")
        self.assertEqual(cancelled["response"]["status"], "cancelled")
        client.send_event(type="response.create")
        error = await client.next("error")
        self.assertEqual(error["error"]["code"], "key_budget_exceeded")
        _, code, _ = await self.clients[-1][1].closed
        self.assertEqual(code, 1008)
        self.assertEqual([e["type"] for e in self.fake.received],
                         ["response.create", "response.cancel"])
        gateway = self.service.gateway
        await until(lambda: not gateway.realtime.active() and not gateway.ledger.pending)
        [row] = await gateway.store.usage_report("model")
        self.assertEqual((row["input_tokens"], row["output_tokens"]),
                         (CANCELLED_USAGE["input_tokens"], CANCELLED_USAGE["output_tokens"]))
        self.assertGreater(row["cost_usd"], 0)


class EphemeralVoiceTests(VoiceTestCase):
    async def test_a_beta_transcription_session_opens_with_its_secret(self) -> None:
        client = openai.OpenAI(base_url=self.base_url + "/v1", api_key="sk-caller")
        created = await deferToThread(
            client.beta.realtime.transcription_sessions.create,
            input_audio_transcription={"model": "gpt-4o-transcribe"},
            client_secret={"expires_at": {"anchor": "created_at", "seconds": 60}})
        client.close()
        secret = created.client_secret.value
        self.assertTrue(secret.startswith("ek_"))
        self.assertEqual(created.input_audio_transcription.model, "gpt-4o-transcribe")
        # A beta secret opens beta sessions only.
        base = f"ws://127.0.0.1:{self.port}/v1/realtime?intent=transcription"
        answer = await deferToThread(refused, base,
                                     additional_headers={"Authorization": f"Bearer {secret}"})
        self.assertEqual((answer[0], answer[1]["error"]["code"]), (400, "beta_required"))

        socket = await self.connect("intent=transcription", headers={
            "Authorization": f"Bearer {secret}", "OpenAI-Beta": "realtime=v1"})
        await socket.next("session.created")
        socket.send_event(type="input_audio_buffer.append", audio=AUDIO)
        socket.send_event(type="input_audio_buffer.commit")
        await socket.next("conversation.item.input_audio_transcription.completed")
        socket.sendClose(1000)
        await self.clients[-1][1].closed
        first = self.fake.received[0]
        self.assertEqual(first["type"], "transcription_session.update")
        self.assertEqual(first["session"], {"input_audio_transcription": {
            "model": "gpt-4o-transcribe"}})
        self.assertEqual(self.fake.handshakes[0].params["intent"], ["transcription"])
        self.assertEqual(self.fake.handshakes[0].headers["openai-beta"], "realtime=v1")
        row = (await self.rows())["gpt-4o-transcribe"]
        self.assertEqual((row["requests"], row["errors"]), (1, 0))

    async def test_a_browser_opens_a_translation_session_with_a_secret(self) -> None:
        response = await treq.post(
            self.base_url + "/v1/realtime/translations/client_secrets",
            orjson.dumps({"session": {"model": "gpt-realtime-translate",
                                      "audio": {"output": {"language": "es"}}}}),
            pool=self.pool, headers={"authorization": "Bearer sk-caller",
                                     "content-type": "application/json"})
        self.assertEqual(response.code, 200)
        issued = await response.json()
        self.assertEqual((issued["session"]["object"], issued["session"]["type"]),
                         ("realtime.translation_session", "translation"))
        socket = await self.connect(
            "", path="/v1/realtime/translations",
            protocols=["realtime", "openai-insecure-api-key." + issued["value"]])
        await socket.next("session.created")
        socket.send_event(type="session.input_audio_buffer.append", audio=AUDIO)
        await socket.next("session.output_audio.delta")
        socket.sendClose(1000)
        await self.clients[-1][1].closed
        [handshake] = self.fake.handshakes
        self.assertEqual((handshake.path, handshake.params["model"]),
                         ("/v1/realtime/translations", ["gpt-realtime-translate"]))
        self.assertEqual(self.fake.received[0], {
            "type": "session.update", "event_id": "event_gw_client_secret",
            "session": {"audio": {"output": {"language": "es"}}}})
        [row] = (await self.rows()).values()
        self.assertEqual((row["model"], row["audio_seconds"]), ("gpt-realtime-translate", 1.0))
