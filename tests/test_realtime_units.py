"""The realtime relay's plain parts, without sockets: sniffing, the tally, closes, sessions."""

from __future__ import annotations

import orjson
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txgateway.config import RealtimeSettings
from txgateway.metrics import GatewayMetrics
from txgateway.realtime import closing
from txgateway.realtime.events import base64_length, event_type, sniff_type
from txgateway.realtime.handshake import read_upgrade
from txgateway.realtime.legs import ILeg
from txgateway.realtime.session import SessionBook, SessionInfo, TooManySessions
from txgateway.realtime.tally import SessionTally, response_usage, transcription_usage

DONE = {"type": "response.done", "response": {"id": "resp_1", "status": "completed", "usage": {
    "input_tokens": 132, "output_tokens": 121,
    "input_token_details": {"text_tokens": 119, "audio_tokens": 13, "cached_tokens": 64,
                            "cached_tokens_details": {"text_tokens": 64}},
    "output_token_details": {"text_tokens": 30, "audio_tokens": 91}}}}


def frame(event: dict) -> bytes:
    return orjson.dumps(event)


class EventTests(SynchronousTestCase):
    def test_sniff(self) -> None:
        """The type is read from the start; a nested or missing one is not trusted."""
        self.assertEqual(sniff_type(b'{"type":"response.output_audio.delta","delta":"AA"}'),
                         "response.output_audio.delta")
        self.assertEqual(sniff_type(b'{"type" : "x.y"}'), "x.y")
        self.assertIsNone(sniff_type(b'{"response":{"type":"nested"},"type":"response.done"}'))
        self.assertIsNone(sniff_type(b'{"delta":"' + b"A" * 300 + b'","type":"late"}'))

    def test_event_type_parses_only_accounted(self) -> None:
        self.assertEqual(event_type(b'{"type":"response.output_audio.delta"}'),
                         ("response.output_audio.delta", None))
        kind, event = event_type(frame(DONE))
        self.assertEqual((kind, event), ("response.done", DONE))
        late = frame({"response": {"type": "x"}, "type": "response.done"})
        self.assertEqual(event_type(late)[0], "response.done")
        self.assertEqual(event_type(b"{not json"), (None, None))

    def test_base64_length(self) -> None:
        self.assertEqual(base64_length(b'{"type":"a","audio":"QUFB"}', b'"audio"'), 4)
        self.assertEqual(base64_length(b'{"type":"a"}', b'"audio"'), 0)


class TallyTests(SynchronousTestCase):
    def test_responses_counted_once_by_id(self) -> None:
        """Repeated response.done counts once; cancelled and out-of-band ones count too."""
        tally = SessionTally(0.0)
        tally.server_frame(frame(DONE), False)
        tally.server_frame(frame(DONE), False)
        cancelled = {"type": "response.done", "response": {
            "id": "resp_2", "status": "cancelled", "usage": {"input_tokens": 5,
                                                             "output_tokens": 1}}}
        tally.server_frame(frame(cancelled), False)
        self.assertEqual(tally.usage.input_tokens, 137)
        self.assertEqual(tally.usage.output_audio_tokens, 91)
        self.assertEqual(tally.as_json()["response_statuses"], {"completed": 1, "cancelled": 1})

    def test_unterminated(self) -> None:
        tally = SessionTally(0.0)
        tally.server_frame(frame({"type": "response.created", "response": {"id": "r9"}}), False)
        self.assertEqual(tally.unterminated, ["r9"])
        self.assertTrue(tally.open_responses)

    def test_modalities_and_cache(self) -> None:
        usage = response_usage(DONE["response"]["usage"])
        self.assertEqual(sorted(usage.token_counts()), sorted([
            ("input", "text", False, 55), ("input", "text", True, 64),
            ("input", "audio", False, 13), ("output", "text", False, 30),
            ("output", "audio", False, 91)]))
        self.assertEqual(response_usage(None).total_tokens, 0)
        # No split given: the cached tokens are taken as text.
        self.assertEqual(response_usage({"input_token_details": {"cached_tokens": 7}})
                         .cached_text_tokens, 7)

    def test_transcription_forms(self) -> None:
        self.assertEqual(transcription_usage({"type": "duration", "seconds": 2.5})
                         .transcription_seconds, 2.5)
        tokens = transcription_usage({"type": "tokens", "input_tokens": 13, "output_tokens": 9})
        self.assertEqual(tokens.transcription_tokens, 22)
        tally = SessionTally(0.0)
        event = {"type": "conversation.item.input_audio_transcription.completed",
                 "item_id": "i", "content_index": 0, "usage": {"type": "duration", "seconds": 1}}
        tally.server_frame(frame(event), False)
        tally.server_frame(frame(event), False)
        self.assertEqual(tally.usage.transcription_seconds, 1.0)

    def test_audio_seconds_follow_the_format(self) -> None:
        """G.711 is 8000 bytes a second, pcm16 48000."""
        tally = SessionTally(0.0)
        tally.server_frame(frame({"type": "session.updated", "session": {
            "audio": {"input": {"format": {"type": "audio/pcmu"}}}}}), False)
        tally.client_frame(frame({"type": "input_audio_buffer.append",
                                  "audio": "AAAA" * 2000}), False)
        self.assertAlmostEqual(tally.audio_seconds_in, 0.75)
        tally.server_frame(frame({"type": "response.output_audio.delta",
                                  "delta": "AAAA" * 16000}), False)
        self.assertAlmostEqual(tally.audio_seconds_out, 1.0)


class ClosingTests(SynchronousTestCase):
    def test_codes(self) -> None:
        self.assertEqual(closing.passed_on(True, 4321, 1011), 4321)
        self.assertEqual(closing.passed_on(True, None, 1011), 1000)
        self.assertEqual(closing.passed_on(False, 1006, 1011), 1011)
        self.assertEqual(closing.passed_on(True, 1015, 1001), 1001)
        self.assertFalse(closing.sendable(1005))
        self.assertTrue(closing.sendable(1008))

    def test_reason_clipped_on_a_character(self) -> None:
        clipped = closing.clip_reason("é" * 100)
        self.assertEqual(len(clipped), 122)
        self.assertEqual(clipped.decode(), "é" * 61)


class HandshakeTests(SynchronousTestCase):
    def test_browser_key_and_beta(self) -> None:
        upgrade = read_upgrade({}, {"model": ["m"]},
                               ["realtime", "openai-insecure-api-key.sk-1",
                                "openai-beta.realtime-v1"])
        self.assertEqual((upgrade.key, upgrade.beta, upgrade.protocol), ("sk-1", True,
                                                                          "realtime"))
        self.assertNotIn("sk-1", repr(upgrade))

    def test_header_key_and_intent(self) -> None:
        upgrade = read_upgrade({"authorization": "Bearer sk-2", "openai-beta": "realtime=v1"},
                               {"intent": ["transcription"]}, [])
        self.assertEqual((upgrade.key, upgrade.model, upgrade.intent, upgrade.beta,
                          upgrade.protocol), ("sk-2", None, "transcription", True, None))


@implementer(ILeg)
class FakeLeg:
    producer = None

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def send(self, payload: bytes, is_binary: bool) -> None:
        self.sent.append(payload)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def pause_source(self, producer: object) -> None:
        pass


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.settings = RealtimeSettings(max_sessions=2, max_sessions_per_key=1,
                                         idle_timeout=10, max_duration=100, token_budget=300)
        self.book = SessionBook(self.clock, self.settings, GatewayMetrics(),
                                Logger(observer=lambda event: None))

    def open(self, key: str | None = "k1") -> tuple:
        info = SessionInfo(id=f"rts_{key}", model="m", provider="p", provider_kind="openai",
                           upstream_model="m", key_id=key, intent="realtime", beta=False)
        session = self.book.admit(info)
        client, upstream = FakeLeg(), FakeLeg()
        session.upstream_ready(upstream)
        session.upstream_message(b'{"type":"session.created","session":{}}', False)
        session.client_opened(client)
        return session, client, upstream

    def test_early_frames_and_limits(self) -> None:
        """Upstream frames before the upgrade are delivered first; limits are per key."""
        session, client, _ = self.open()
        self.assertEqual(client.sent, [b'{"type":"session.created","session":{}}'])
        self.assertRaises(TooManySessions, self.open, "k1")
        self.open("k2")
        self.assertRaises(TooManySessions, self.open, "k3")

    def test_idle_is_counted_from_the_last_frame(self) -> None:
        session, client, upstream = self.open()
        self.clock.advance(6)
        session.from_client(b'{"type":"x"}', False)
        self.clock.advance(6)
        self.assertIsNone(client.closed)
        self.clock.advance(4)
        self.assertEqual(client.closed[0], 1008)
        self.assertEqual(upstream.closed[0], 1008)
        self.assertIn(b"session_idle_timeout", client.sent[-1])

    def test_budget_cancels_an_open_response(self) -> None:
        session, client, upstream = self.open()
        session.upstream_message(b'{"type":"response.created","response":{"id":"r2"}}', False)
        session.upstream_message(frame(DONE), False)
        self.assertIsNone(client.closed)
        done = {"type": "response.done", "response": {"id": "r3", "usage": {
            "input_tokens": 60}}}
        session.upstream_message(frame(done), False)
        self.assertEqual(upstream.sent[-1], b'{"type":"response.cancel"}')
        self.assertEqual((client.closed[0], upstream.closed[0]), (1008, 1008))
        session.client_closed(True, 1008, "")
        session.upstream_closed(True, 1008, "")
        [ended] = self.book.recent()
        self.assertEqual(ended.tally.unterminated, ["r2"])
        self.assertEqual(ended.ended_by, "session_token_budget_exceeded")
        self.assertEqual(self.book.active(), [])

    def test_client_leaving_during_the_dial(self) -> None:
        info = SessionInfo(id="rts_x", model="m", provider="p", provider_kind="openai",
                           upstream_model="m", key_id=None, intent="realtime", beta=False)
        session = self.book.admit(info)
        session.client_closed(False, 1006, "gone")
        upstream = FakeLeg()
        session.upstream_ready(upstream)
        self.assertEqual(upstream.closed[0], 1001)
        self.assertEqual(self.book.active(), [])
