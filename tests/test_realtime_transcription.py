"""
Input transcription through real sockets, in both usage shapes (tokens, and the duration
whisper-1 reports), priced at the transcription model's own rate and kept apart from the
conversation's tokens in the ledger; a transcription session is one record of its model.
"""

from __future__ import annotations

from typing import Any

from tests.fake_realtime import ASR_USAGE, DURATION_USAGE, USAGE
from tests.realtime_harness import RealtimeTestCase, until
from tests.test_realtime import AUDIO
from txgateway.pricing import SHIPPED_PRICES

PER_TOKEN = 1e-6


class TranscriptionTests(RealtimeTestCase):
    async def turn(self, query: str, transcriber: str | None) -> dict[str, dict[str, Any]]:
        """A transcribed turn; the ledger's rows by model once the session has ended."""
        client = await self.connect(query)
        await client.next("session.created")
        if transcriber is not None:
            client.send_event(type="session.update", session={
                "type": "realtime", "audio": {"input": {"transcription": {
                    "model": transcriber}}}})
            await client.next("session.updated")
        client.send_event(type="input_audio_buffer.append", audio=AUDIO)
        client.send_event(type="input_audio_buffer.commit")
        await client.next("conversation.item.input_audio_transcription.completed")
        if query.startswith("model="):
            client.send_event(type="response.create")
            await client.next("response.done")
        client.sendClose(1000)
        await self.clients[-1][1].closed
        gateway = self.service.gateway
        await until(lambda: not gateway.realtime.active() and not gateway.ledger.pending)
        return {row["model"]: row for row in await gateway.store.usage_report("model")}

    async def test_token_priced_transcription_is_a_record_of_its_own(self) -> None:
        rows = await self.turn("model=voice", "gpt-4o-transcribe")
        price = SHIPPED_PRICES["gpt-4o-transcribe"]
        transcription = rows["gpt-4o-transcribe"]
        self.assertEqual((transcription["input_tokens"], transcription["output_tokens"]),
                         (ASR_USAGE["input_tokens"], ASR_USAGE["output_tokens"]))
        self.assertAlmostEqual(transcription["cost_usd"], (
            ASR_USAGE["input_tokens"] * price.audio_input
            + ASR_USAGE["output_tokens"] * price.output) * PER_TOKEN, places=9)
        conversation = rows["voice"]
        self.assertEqual((conversation["input_tokens"], conversation["output_tokens"]),
                         (USAGE["input_tokens"], USAGE["output_tokens"]))
        self.assertGreater(conversation["cost_usd"], 0)

    async def test_duration_priced_transcription_is_billed_by_the_second(self) -> None:
        rows = await self.turn("model=voice", "whisper-1")
        whisper = rows["whisper-1"]
        self.assertEqual(whisper["audio_seconds"], DURATION_USAGE["seconds"])
        self.assertEqual(whisper["input_tokens"], 0)
        self.assertAlmostEqual(whisper["cost_usd"], DURATION_USAGE["seconds"]
                               * SHIPPED_PRICES["whisper-1"].per_second, places=9)
        self.assertEqual(rows["voice"]["audio_seconds"], 0)

    async def test_a_transcription_session_is_one_record_of_its_model(self) -> None:
        rows = await self.turn("intent=transcription", None)
        [row] = rows.values()
        self.assertEqual((row["model"], row["requests"], row["input_tokens"]),
                         ("gpt-4o-transcribe", 1, ASR_USAGE["input_tokens"]))
        self.assertGreater(row["cost_usd"], 0)
