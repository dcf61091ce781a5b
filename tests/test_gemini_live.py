"""
OpenAI Realtime callers reaching a Gemini Live model through the gateway, against a fake
``BidiGenerateContent`` server: the setup built from ``session.update``, audio resampled to
16 kHz in and relayed at 24 kHz out, transcripts, tool calls, interruption, and each turn's
``usageMetadata`` billed by modality in the same tally and ledger as any realtime session.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any
from unittest import TestCase

import openai
from twisted.internet.threads import deferToThread

from tests.fake_gemini_live import (
    ANSWER_AUDIO,
    AUDIO_TURN_USAGE,
    PATH,
    SECOND_AT_16K,
    TEXT_TURN_USAGE,
    start_fake_gemini_live,
)
from tests.realtime_harness import RealtimeTestCase, until
from txgateway.plugins.gemini.live import openai_usage, resample

HALF_SECOND = base64.b64encode(bytes(24000)).decode()  # pcm16 at 24 kHz
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather of a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
access_log: {access_log}
admin: {{token: admin-secret}}
realtime: {realtime}
upstream:
  connect_timeout: 2
providers:
  google:
    plugin: gemini
    base_url: http://127.0.0.1:{upstream_port}
    api_key: gemini-secret
models:
  - name: gemini-voice
    provider: google
    model: gemini-live-test
prices:
  gemini-live-test: {{input: 1000000, audio_input: 2000000, output: 3000000,
                      audio_output: 4000000}}
"""


def sdk_voice_turn(base_url: str) -> list[Any]:
    """With the openai SDK: a configured session, a second of speech, the spoken answer."""

    async def run() -> list[Any]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key="sk-caller")
        seen = []
        async with client.realtime.connect(model="gemini-voice") as connection:
            await connection.session.update(session={
                "type": "realtime", "instructions": "Be brief.", "tools": [WEATHER],
                "audio": {"input": {"transcription": {"model": "gpt-4o-transcribe"}},
                          "output": {"voice": "Puck"}}})
            for _ in range(2):
                await connection.input_audio_buffer.append(audio=HALF_SECOND)
            async for event in connection:
                seen.append(event)
                if event.type == "response.done":
                    break
        await client.close()
        return seen

    return asyncio.run(run())


class GeminiLiveTests(RealtimeTestCase):
    config = CONFIG
    #: The SDK runs in a thread: slow on a loaded machine.
    timeout = 45
    start_fake = staticmethod(start_fake_gemini_live)

    async def ended(self) -> tuple[dict[str, Any], dict[str, Any]]:
        gateway = self.service.gateway
        await until(lambda: not gateway.realtime.active() and not gateway.ledger.pending)
        _, sessions = await self.admin("/admin/realtime/sessions")
        [row] = await gateway.store.usage_report("model")
        return sessions["recent"][0], row

    async def test_a_voice_turn_with_the_sdk(self) -> None:
        events = await deferToThread(sdk_voice_turn, self.base_url + "/v1")
        kinds = [event.type for event in events]
        self.assertEqual(kinds[0], "session.created")
        self.assertIn("session.updated", kinds)
        setup = self.fake.received[0]["setup"]
        self.assertEqual(setup, {
            "model": "models/gemini-live-test",
            "generationConfig": {"responseModalities": ["AUDIO"], "speechConfig": {
                "voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Puck"}}}},
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "tools": [{"functionDeclarations": [{key: WEATHER[key] for key in (
                "name", "description", "parameters")}]}],
            "inputAudioTranscription": {}, "outputAudioTranscription": {}})
        self.assertEqual(self.fake.paths, [PATH])
        self.assertEqual(self.fake.headers[0]["x-goog-api-key"], "gemini-secret")
        # A second at 24 kHz in is a second at 16 kHz upstream, in Gemini's MIME type.
        self.assertEqual(self.fake.audio_bytes, SECOND_AT_16K)
        self.assertEqual(self.fake.received[1]["realtimeInput"]["audio"]["mimeType"],
                         "audio/pcm;rate=16000")

        audio = [base64.b64decode(e.delta) for e in events
                 if e.type == "response.output_audio.delta"]
        self.assertEqual(audio, [ANSWER_AUDIO, ANSWER_AUDIO])  # 24 kHz both sides: as is
        self.assertEqual([e.delta for e in events
                          if e.type == "response.output_audio_transcript.delta"],
                         ["Hi ", "there."])
        heard = [e for e in events
                 if e.type == "conversation.item.input_audio_transcription.completed"]
        self.assertEqual(heard[0].transcript, "hello hello ")
        done = events[-1].response
        self.assertEqual((done.status, done.output[0].content[0].transcript),
                         ("completed", "Hi there."))
        self.assertEqual((done.usage.input_tokens, done.usage.output_tokens,
                          done.usage.input_token_details.audio_tokens,
                          done.usage.output_token_details.audio_tokens), (120, 80, 30, 80))

        session, row = await self.ended()
        self.assertEqual((session["provider"], session["responses"]), ("google", 1))
        self.assertEqual(session["audio_seconds_in"], 1.0)
        self.assertEqual((row["input_tokens"], row["output_tokens"],
                          row["input_audio_tokens"], row["output_audio_tokens"]),
                         (120, 80, 30, 80))
        # USD per token here is the price table's per-million figure: 90 text and 30 audio in,
        # 80 audio out.
        self.assertAlmostEqual(row["cost_usd"], 90 * 1 + 30 * 2 + 80 * 4, places=6)

    async def test_text_a_tool_call_and_an_interruption(self) -> None:
        client = await self.connect("model=gemini-voice")
        await client.next("session.created")
        client.send_event(type="conversation.item.create", item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "What's the weather in Paris?"}]})
        client.send_event(type="response.create")
        call = await client.next("response.function_call_arguments.done")
        self.assertEqual((call["call_id"], call["name"], call["arguments"]),
                         ("call_1", "get_weather", '{"city":"Paris"}'))
        asked = await client.next("response.done")
        self.assertEqual(asked["response"]["output"][0]["type"], "function_call")
        # The default setup (the first event was no session.update), then the text turn.
        self.assertEqual(self.fake.received[0]["setup"]["model"], "models/gemini-live-test")
        self.assertEqual(self.fake.received[1], {"clientContent": {"turns": [
            {"role": "user", "parts": [{"text": "What's the weather in Paris?"}]}],
            "turnComplete": True}})

        # Gemini took its setup at the first event: a later configuration is refused.
        client.send_event(type="session.update", session={"type": "realtime",
                                                          "instructions": "Be long."})
        refused = await client.next("error")
        self.assertEqual(refused["error"]["code"], "session_update_unsupported")
        client.send_event(type="conversation.item.create", item={
            "type": "function_call_output", "call_id": "call_1", "output": '{"sky":"sunny"}'})
        client.send_event(type="response.create")
        text = await client.next("response.output_text.delta")
        self.assertEqual(text["delta"], "It is sunny.")
        answered = await client.next("response.done")
        self.assertEqual(answered["response"]["usage"], openai_usage(TEXT_TURN_USAGE))
        self.assertEqual(self.fake.received[2], {"toolResponse": {"functionResponses": [
            {"id": "call_1", "name": "get_weather", "response": {"output": '{"sky":"sunny"}'}}]}})

        client.send_event(type="conversation.item.create", item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Talk, and I will interrupt you."}]})
        client.send_event(type="response.create")
        await client.next("input_audio_buffer.speech_started")
        cut = await client.next("response.done")
        self.assertEqual((cut["response"]["status"], cut["response"]["status_details"]),
                         ("cancelled", {"type": "cancelled", "reason": "turn_detected"}))
        self.assertEqual(cut["response"]["usage"]["output_tokens"], 80)
        client.sendClose(1000)
        await self.clients[-1][1].closed

        session, row = await self.ended()
        self.assertEqual(session["response_statuses"], {"completed": 2, "cancelled": 1})
        # The tool call's turn reported no usage of its own; the other two are summed.
        self.assertEqual((row["input_tokens"], row["output_tokens"]), (40 + 120, 10 + 80))
        self.assertEqual(self.fake.closes[0][1], 1000)


class UnitTests(TestCase):
    def test_resampling_keeps_the_duration_and_the_shape(self) -> None:
        ramp = b"".join(int(value).to_bytes(2, "little", signed=True)
                        for value in range(0, 24000, 10))  # 2400 samples
        down = resample(ramp, 24000, 16000)
        self.assertEqual(len(down), 1600 * 2)
        samples = [int.from_bytes(down[i:i + 2], "little", signed=True)
                   for i in range(0, len(down), 2)]
        self.assertEqual(samples[:3], [0, 15, 30])
        self.assertEqual(len(resample(down, 16000, 24000)), 2400 * 2)
        self.assertEqual(resample(ramp, 24000, 24000), ramp)

    def test_usage_by_modality(self) -> None:
        usage = openai_usage({**AUDIO_TURN_USAGE, "thoughtsTokenCount": 5,
                              "cachedContentTokenCount": 20,
                              "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 20}]})
        self.assertEqual((usage["input_tokens"], usage["output_tokens"]), (120, 85))
        self.assertEqual(usage["input_token_details"]["cached_tokens_details"]["text_tokens"],
                         20)
        self.assertEqual(usage["output_token_details"], {"text_tokens": 5, "audio_tokens": 80})


class VertexLiveTests(RealtimeTestCase):
    config = CONFIG.replace("models:", """  vertex:
    plugin: vertex
    project: proj
    location: europe-west4
    base_url: http://127.0.0.1:{upstream_port}
    access_token: ya29.vertex
models:
  - name: vertex-voice
    provider: vertex
    model: gemini-live-test""")
    start_fake = staticmethod(start_fake_gemini_live)

    async def test_a_vertex_session_is_gemini_live_with_a_bearer_token(self) -> None:
        client = await self.connect("model=vertex-voice")
        await client.next("session.created")
        client.send_event(type="conversation.item.create", item={
            "type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "Hello"}]})
        client.send_event(type="response.create")
        done = await client.next("response.done")
        self.assertEqual(done["response"]["usage"], openai_usage(AUDIO_TURN_USAGE))
        self.assertEqual(self.fake.paths,
                         ["/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent"])
        self.assertEqual(self.fake.headers[0]["authorization"], "Bearer ya29.vertex")
        self.assertEqual(self.fake.received[0]["setup"]["model"],
                         "projects/proj/locations/europe-west4/publishers/google/models/"
                         "gemini-live-test")
