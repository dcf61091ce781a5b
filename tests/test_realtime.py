"""End to end: WebSocket clients through /v1/realtime to a fake upstream and to the demo."""

from __future__ import annotations

import asyncio
import base64

import openai
import orjson
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as sync_connect

from tests.fake_realtime import AUDIO_FRAME, CANCELLED_USAGE, USAGE
from tests.realtime_harness import RealtimeTestCase, until

AUDIO = base64.b64encode(AUDIO_FRAME * 50).decode()  # one second of pcm16


def refused(url: str, **kwargs: object) -> tuple[int, dict]:
    """Open a WebSocket that the server must refuse; its status and JSON body."""
    try:
        sync_connect(url, open_timeout=5, **kwargs).close()
    except InvalidStatus as error:
        return error.response.status_code, orjson.loads(error.response.body)
    raise AssertionError("the upgrade was accepted")


def refused_with_retry(url: str) -> tuple[int, dict, str | None]:
    """`refused`, with the answer's Retry-After."""
    try:
        sync_connect(url, open_timeout=5).close()
    except InvalidStatus as error:
        return (error.response.status_code, orjson.loads(error.response.body),
                error.response.headers.get("retry-after"))
    raise AssertionError("the upgrade was accepted")


def token_samples(text: str) -> dict[tuple, float]:
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name.startswith("txgateway_realtime"):
            for sample in family.samples:
                found[(sample.name, *sorted(sample.labels.items()))] = sample.value
    return found


class RelayTests(RealtimeTestCase):
    async def test_voice_turn(self) -> None:
        """
        A voice turn is relayed both ways in order; the upstream gets the provider's key and
        model, and the tally (metrics, admin API, log line) matches the usage reported.
        """
        client = await self.connect(headers={"Authorization": "Bearer sk-caller"})
        await client.next("session.created")
        client.send_event(type="input_audio_buffer.append", audio=AUDIO)
        client.send_event(type="input_audio_buffer.commit")
        client.send_event(type="response.create")
        done = await client.next("response.done")
        self.assertEqual(done["response"]["usage"], USAGE)
        deltas = [e for e in client.events() if e["type"] == "response.output_audio.delta"]
        self.assertEqual(len(deltas), 3)
        handshake = self.fake.handshakes[0]
        self.assertEqual(handshake.params, {"model": ["gpt-realtime"]})
        self.assertEqual(handshake.headers["authorization"], "Bearer sk-upstream-secret")
        self.assertNotIn("openai-beta", handshake.headers)
        self.assertEqual([e["type"] for e in self.fake.received],
                         ["input_audio_buffer.append", "input_audio_buffer.commit",
                          "response.create"])
        self.assertEqual(self.fake.received[0]["audio"], AUDIO)

        status, sessions = await self.admin("/admin/realtime/sessions")
        self.assertEqual(status, 200)
        [live] = sessions["active"]
        self.assertEqual(live["responses"], 1)
        self.assertEqual(live["usage"]["input_tokens"], 132)

        client.sendClose(1000)
        self.assertEqual((await self.clients[0][1].closed)[1], 1000)
        await self.fake_closed()
        status, sessions = await self.admin("/admin/realtime/sessions")
        [ended] = sessions["recent"]
        self.assertEqual(sessions["active"], [])
        self.assertEqual(ended["model"], "voice")
        self.assertEqual(ended["provider"], "fake")
        self.assertEqual(ended["usage"], {
            "input_tokens": 132, "output_tokens": 121, "input_text_tokens": 119,
            "input_audio_tokens": 13, "input_image_tokens": 0, "input_cached_tokens": 64,
            "input_cached_text_tokens": 64, "input_cached_audio_tokens": 0,
            "input_cached_image_tokens": 0, "output_text_tokens": 30,
            "output_audio_tokens": 91, "transcription_tokens": 22,
            "transcription_input_tokens": 13, "transcription_output_tokens": 9,
            "transcription_seconds": 0.0, "live_seconds": 0.0,
            "live_paused_seconds": 0.0})
        self.assertEqual(ended["audio_seconds_in"], 1.0)
        self.assertEqual(ended["audio_seconds_out"], 0.6)
        self.assertEqual(ended["client_close_code"], 1000)
        status, one = await self.admin(f"/admin/realtime/sessions/{ended['id']}")
        self.assertEqual(one, ended)

        samples = token_samples(await self.metrics())
        labels = (("model", "voice"), ("provider", "openai"))

        def tokens(direction: str, modality: str, cached: str) -> float:
            return samples[("txgateway_realtime_tokens_total", ("cached", cached),
                            ("direction", direction), ("modality", modality), *labels)]

        self.assertEqual(tokens("input", "text", "false"), 119 - 64)
        self.assertEqual(tokens("input", "text", "true"), 64)
        self.assertEqual(tokens("input", "audio", "false"), 13)
        self.assertEqual(tokens("output", "text", "false"), 30)
        self.assertEqual(tokens("output", "audio", "false"), 91)
        self.assertEqual(samples[("txgateway_realtime_sessions_active", *labels)], 0)
        self.assertEqual(samples[("txgateway_realtime_transcription_tokens_total",
                                  ("direction", "input"), *labels)], 13)
        [line] = [r for r in self.access_records() if r["route"] == "realtime"]
        self.assertEqual(line["session_id"], ended["id"])
        self.assertEqual(line["usage"]["output_audio_tokens"], 91)

    async def fake_closed(self) -> None:
        if not self.fake.closes:
            self.fake.closed = Deferred()
            await self.fake.closed
        await deferLater(reactor, 0.01, lambda: None)

    async def test_out_of_band_unknown_binary_and_bad_json(self) -> None:
        """
        Out-of-band responses count apart from the conversation's; unknown events, binary
        frames and invalid JSON pass as they are, and the provider's error comes back.
        """
        client = await self.connect()
        await client.next("session.created")
        client.send_event(type="response.create", response={"conversation": "none"})
        client.send_event(type="response.create")
        await client.next("response.done")
        await client.next("response.done")
        client.send_event(type="test.unknown")
        await client.next("future.event")
        client.sendMessage(b"\x00\x01binary", True)
        client.sendMessage(b"{not json")
        error = await client.next("error")
        self.assertEqual(error["error"]["code"], "invalid_json")
        self.assertIn((b"\x00\x01binary", True), client.messages)
        self.assertEqual(self.fake.received[-2:], [b"\x00\x01binary", b"{not json"])
        session = self.service.gateway.realtime.active()[0]
        self.assertEqual(session.tally.usage.input_tokens, 132 + 15)
        self.assertEqual(session.tally.usage.input_image_tokens, 5)
        self.assertEqual(len(session.tally.responses), 2)

    async def test_browser_subprotocol_auth_and_beta(self) -> None:
        """The key subprotocol is read, never echoed, forwarded or logged; beta is passed on."""
        client = await self.connect(protocols=[
            "realtime", "openai-insecure-api-key.sk-browser-key", "openai-beta.realtime-v1"])
        self.assertEqual(client.websocket_protocol_in_use, "realtime")
        await client.next("session.created")
        handshake = self.fake.handshakes[0]
        self.assertEqual(handshake.headers["openai-beta"], "realtime=v1")
        self.assertEqual(handshake.protocols, [])
        self.assertNotIn("sk-browser-key", repr(handshake))
        client.sendClose(1000)
        await self.clients[0][1].closed
        await self.fake_closed()
        with open(self.access_log_path, "rb") as log:
            self.assertNotIn(b"sk-browser-key", log.read())

    async def test_refusals_before_the_upgrade(self) -> None:
        """Refusals are HTTP statuses with OpenAI error bodies, before any upgrade."""
        base = f"ws://127.0.0.1:{self.port}/v1/realtime?model="
        cases = [("refuse-429", 429, "upstream_refused"), ("refuse-401", 502, "upstream_refused"),
                 ("no-such-model", 404, "model_not_found"),
                 ("unreachable", 502, "upstream_unreachable")]
        for model, status, code in cases:
            answer = await deferToThread(refused, base + model)
            self.assertEqual((answer[0], answer[1]["error"]["code"]), (status, code), model)
        self.assertEqual(self.service.gateway.realtime.active(), [])
        records = [r for r in self.access_records() if r["route"] == "realtime"]
        self.assertEqual([r["status"] for r in records], [429, 502, 404, 502])

    async def test_upstream_drop_mid_response(self) -> None:
        """An upstream that drops mid-response closes the caller with 1011; the tally says so."""
        self.fake.delay = 0.05
        client = await self.connect()
        client.send_event(type="response.create")
        await client.next("response.output_audio.delta")
        client.send_event(type="test.drop")
        _, code, _ = await self.clients[0][1].closed
        self.assertEqual(code, 1011)
        [ended] = (await self.admin("/admin/realtime/sessions"))[1]["recent"]
        self.assertEqual(ended["ended_by"], "upstream_lost")
        self.assertEqual(len(ended["unterminated_responses"]), 1)

    async def test_close_codes_pass_both_ways(self) -> None:
        """The upstream's close code and reason reach the caller, and the caller's the upstream."""
        client = await self.connect()
        client.send_event(type="test.close")
        self.assertEqual(await self.clients[0][1].closed, (True, 4321, "fake says bye"))
        client = await self.connect()
        await client.next("session.created")
        client.sendClose(4000, "caller says bye")
        await self.clients[1][1].closed
        await self.fake_closed()
        self.assertEqual(self.fake.closes[-1], (True, 4000, "caller says bye"))

    async def test_client_vanishing_closes_upstream(self) -> None:
        """A caller that drops without a close frame gets its upstream closed with 1001."""
        client = await self.connect()
        await client.next("session.created")
        client.transport.abortConnection()
        await self.clients[0][1].closed
        await self.fake_closed()
        self.assertEqual(self.fake.closes[0][1], 1001)
        [ended] = (await self.admin("/admin/realtime/sessions"))[1]["recent"]
        self.assertEqual(ended["ended_by"], "client_lost")

    async def test_transcription_intent(self) -> None:
        """``?intent=transcription`` routes the transcription model and omits it upstream."""
        client = await self.connect("intent=transcription")
        client.send_event(type="input_audio_buffer.append", audio=AUDIO)
        client.send_event(type="input_audio_buffer.commit")
        await client.next("conversation.item.input_audio_transcription.completed")
        self.assertEqual(self.fake.handshakes[0].params, {"intent": ["transcription"]})
        [session] = self.service.gateway.realtime.active()
        self.assertEqual(session.info.model, "gpt-4o-transcribe")
        self.assertEqual(session.tally.usage.transcription_tokens, 22)

    async def test_admin_needs_its_token(self) -> None:
        status, body = await self.admin("/admin/realtime/sessions", token="wrong")
        self.assertEqual((status, body["error"]["code"]), (401, "invalid_admin_token"))


class BudgetTests(RealtimeTestCase):
    realtime = "{token_budget: 300, max_sessions: 1}"

    async def test_token_budget(self) -> None:
        """Crossing the budget: an error event, response.cancel upstream, 1008 both sides."""
        self.fake.delay = 0.01
        client = await self.connect()
        client.send_event(type="response.create")
        await client.next("response.done")
        client.send_event(type="response.create", response={"conversation": "none"})
        await client.next("response.done")
        client.send_event(type="response.create")
        error = await client.next("error")
        self.assertEqual(error["error"]["code"], "session_token_budget_exceeded")
        self.assertEqual((await self.clients[0][1].closed)[1], 1008)
        await self.fake_closed()
        self.assertEqual(self.fake.closes[0][1], 1008)
        [ended] = (await self.admin("/admin/realtime/sessions"))[1]["recent"]
        self.assertEqual(ended["usage"]["input_tokens"], 132 * 2 + 15)
        self.assertEqual(ended["ended_by"], "session_token_budget_exceeded")

    async def test_max_sessions(self) -> None:
        """
        Sessions over the gateway's limit are refused before the upgrade with 503 and
        Retry-After (an overload, issue 16 item 6), not left to queue.
        """
        await self.connect()
        status, body, retry_after = await deferToThread(
            refused_with_retry, f"ws://127.0.0.1:{self.port}/v1/realtime?model=voice")
        self.assertEqual((status, body["error"]["code"], retry_after),
                         (503, "too_many_sessions", "1"))

    fake_closed = RelayTests.fake_closed


class TimeGuardTests(RealtimeTestCase):
    realtime = "{idle_timeout: 0.2, max_duration: 0.6}"

    async def test_idle_then_duration(self) -> None:
        """A silent session is closed at the idle timeout; a busy one at the duration limit."""
        idle = await self.connect()
        _, code, _ = await self.clients[0][1].closed
        self.assertEqual(code, 1008)
        self.assertEqual(idle.events()[-1]["error"]["code"], "session_idle_timeout")
        busy = await self.connect()
        while not self.clients[1][1].closed.called:
            busy.send_event(type="input_audio_buffer.append", audio="AAAA")
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(busy.events()[-1]["error"]["code"], "session_max_duration")


def sdk_voice_session(base_url: str) -> list:
    """A voice turn, then a text turn, with the openai SDK's realtime client."""

    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-caller")
        seen = []
        async with client.realtime.connect(model="demo") as connection:
            await connection.session.update(session={
                "type": "realtime", "audio": {"input": {"transcription": {"model": "demo"}}}})
            await connection.input_audio_buffer.append(audio=AUDIO)
            await connection.input_audio_buffer.commit()
            await connection.response.create()
            async for event in connection:
                seen.append(event)
                if event.type == "response.done":
                    break
            await connection.conversation.item.create(item={
                "type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "And now in text please"}]})
            await connection.response.create(response={"output_modalities": ["text"]})
            async for event in connection:
                seen.append(event)
                if event.type == "response.done":
                    break
        await client.close()
        return seen

    return asyncio.run(run())


class SDKTests(RealtimeTestCase):
    async def test_demo_voice_and_text_with_the_sdk(self) -> None:
        """The openai SDK's realtime client talks to the demo provider through the gateway."""
        events = await deferToThread(sdk_voice_session, self.base_url + "/v1")
        kinds = [event.type for event in events]
        self.assertIn("response.output_audio.delta", kinds)
        self.assertIn("response.output_text.delta", kinds)
        self.assertIn("conversation.item.input_audio_transcription.completed", kinds)
        voice, text = [e.response for e in events if e.type == "response.done"]
        audio = [e for e in events if e.type == "response.output_audio.delta"]
        self.assertEqual(len(base64.b64decode(audio[0].delta)), 9600)
        self.assertEqual(voice.usage.input_token_details.audio_tokens, 10)
        self.assertEqual(voice.usage.output_token_details.audio_tokens,
                         4 * voice.usage.output_token_details.text_tokens)
        # The second turn reads the first again: its input is cached, the reply's audio too.
        self.assertEqual(text.usage.input_token_details.cached_tokens, 10)
        self.assertEqual(text.usage.input_token_details.audio_tokens,
                         10 + voice.usage.output_token_details.audio_tokens)
        self.assertEqual(text.usage.output_token_details.audio_tokens, 0)
        await deferLater(reactor, 0.05, lambda: None)
        [ended] = self.service.gateway.realtime.recent()
        usage = ended.tally.usage
        self.assertEqual(usage.input_tokens,
                         voice.usage.input_tokens + text.usage.input_tokens)
        self.assertEqual(usage.output_tokens,
                         voice.usage.output_tokens + text.usage.output_tokens)
        self.assertEqual(usage.transcription_input_tokens, 10)


def sdk_cancelled_turn(base_url: str) -> list:
    """
    With the openai SDK: a response cancelled at its first audio delta, one played through,
    then a cancel with nothing running (which OpenAI answers with an error).
    """

    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-caller")
        seen = []
        async with client.realtime.connect(model="voice") as connection:
            await connection.response.create()
            cancelled = False
            async for event in connection:
                seen.append(event)
                if event.type == "response.output_audio.delta" and not cancelled:
                    await connection.response.cancel()
                    cancelled = True
                if event.type == "response.done":
                    break
            await connection.response.create()
            async for event in connection:
                seen.append(event)
                if event.type == "response.done":
                    break
            await connection.response.cancel()
            async for event in connection:
                seen.append(event)
                if event.type == "error":
                    break
        await client.close()
        return seen

    return asyncio.run(run())


class SDKCancelTests(RealtimeTestCase):
    async def test_cancelled_response_counts_once(self) -> None:
        """
        A caller's ``response.cancel`` through the gateway: the upstream's cancelled
        ``response.done`` reaches the SDK and its partial usage is tallied once, beside the
        completed response's; the admin API and the metrics hold the hand-summed totals.
        """
        self.fake.delay = 0.1
        events = await deferToThread(sdk_cancelled_turn, self.base_url + "/v1")
        cancelled, completed = [e.response for e in events if e.type == "response.done"]
        self.assertEqual((cancelled.status, cancelled.status_details.reason),
                         ("cancelled", "client_cancelled"))
        self.assertEqual(cancelled.usage.output_tokens, CANCELLED_USAGE["output_tokens"])
        self.assertEqual(completed.status, "completed")
        self.assertEqual(events[-1].error.code, "response_cancel_not_active")
        # Cancelled after the first of three audio deltas (and its transcript delta).
        audio = [e for e in events if e.type == "response.output_audio.delta"]
        self.assertEqual(len(audio), 1 + 3)
        self.assertEqual([e["type"] for e in self.fake.received],
                         ["response.create", "response.cancel", "response.create",
                          "response.cancel"])

        await until(lambda: self.service.gateway.realtime.recent())
        status, sessions = await self.admin("/admin/realtime/sessions")
        [ended] = sessions["recent"]
        self.assertEqual(ended["responses"], 2)
        self.assertEqual(ended["response_statuses"], {"cancelled": 1, "completed": 1})
        self.assertEqual(ended["unterminated_responses"], [])
        self.assertEqual(ended["client_close_code"], 1000)
        usage = ended["usage"]
        self.assertEqual((usage["input_tokens"], usage["output_tokens"]), (132 + 150, 121 + 17))
        self.assertEqual(usage["input_text_tokens"], 119 + 125)
        self.assertEqual(usage["input_audio_tokens"], 13 + 25)
        self.assertEqual(usage["input_cached_tokens"], 64 + 100)
        self.assertEqual(usage["input_cached_text_tokens"], 64 + 96)
        self.assertEqual(usage["input_cached_audio_tokens"], 0 + 4)
        self.assertEqual(usage["output_text_tokens"], 30 + 5)
        self.assertEqual(usage["output_audio_tokens"], 91 + 12)

        samples = token_samples(await self.metrics())
        labels = (("model", "voice"), ("provider", "openai"))
        tokens = {(direction, modality, cached): samples[(
            "txgateway_realtime_tokens_total", ("cached", cached), ("direction", direction),
            ("modality", modality), *labels)]
            for direction, modality, cached in [
                ("input", "text", "false"), ("input", "text", "true"),
                ("input", "audio", "false"), ("input", "audio", "true"),
                ("output", "text", "false"), ("output", "audio", "false")]}
        self.assertEqual(tokens, {
            ("input", "text", "false"): (119 - 64) + (125 - 96),
            ("input", "text", "true"): 64 + 96,
            ("input", "audio", "false"): 13 + (25 - 4),
            ("input", "audio", "true"): 0 + 4,
            ("output", "text", "false"): 30 + 5,
            ("output", "audio", "false"): 91 + 12})
