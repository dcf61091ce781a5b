"""The realtime relay's plain parts, without sockets: sniffing, the tally, closes, sessions."""

from __future__ import annotations

import orjson
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txgateway.config import RealtimeSettings
from txgateway.metrics import GatewayMetrics
from txgateway.realtime import closing
from txgateway.realtime.events import base64_length, event_type, sniff_type
from txgateway.realtime.handshake import read_upgrade
from txgateway.realtime.legs import ILeg
from txgateway.realtime.seats import TooManySessions
from txgateway.realtime.session import SessionBook, SessionInfo
from txgateway.realtime.stall import StallGuard
from txgateway.realtime.tally import (
    NO_USAGE,
    SessionTally,
    response_usage,
    transcription_usage,
)

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
    def test_live_usage_replaces_never_adds(self) -> None:
        """Each Live usage report is the session's total: only increases are counted."""
        tally = SessionTally(0.0)
        added = [tally.server_frame(frame({"type": kind, "usage": usage}), False)
                 for kind, usage in (("session.usage.updated", {"seconds": 4}),
                                     ("session.usage.updated", {"seconds": 4}),
                                     ("session.usage.updated", {"seconds": 9,
                                                                "paused_seconds": 3}),
                                     ("session.usage.updated", {"seconds": "x"}),
                                     ("session.closed", {"seconds": 12, "paused_seconds": 3}))]
        self.assertEqual([usage.live_seconds for usage in added], [4, 0, 5, 0, 3])
        self.assertEqual((tally.usage.live_seconds, tally.usage.live_paused_seconds), (12, 3))

    def test_translation_audio_is_measured_both_ways(self) -> None:
        tally = SessionTally(0.0)
        audio = "A" * 64000  # 48,000 bytes: a second of 24 kHz pcm16
        tally.client_frame(frame({"type": "session.input_audio_buffer.append",
                                  "audio": audio}), False)
        tally.server_frame(frame({"type": "session.output_audio.delta", "delta": audio}),
                           False)
        self.assertEqual((tally.audio_seconds_in, tally.audio_seconds_out), (1.0, 1.0))

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


    def test_audio_found_however_the_event_is_written(self) -> None:
        """
        Audio events are counted whether they start as SDKs write them (the fast path) or put
        ``type`` later; a text that merely names the event is not audio.
        """
        tally = SessionTally(0.0)
        for payload in (b'{"type":"input_audio_buffer.append","audio":"' + b"A" * 64000 + b'"}',
                        b'{"type": "input_audio_buffer.append", "audio": "' + b"A" * 64000
                        + b'"}',
                        b'{"event_id":"e1","type":"input_audio_buffer.append","audio":"'
                        + b"A" * 64000 + b'"}'):
            tally.client_frame(payload, False)
        tally.client_frame(frame({"type": "conversation.item.create", "item": {
            "type": "message", "content": [
                {"type": "input_text", "text": "input_audio_buffer.append " + "A" * 64}]}}),
            False)
        self.assertAlmostEqual(tally.audio_seconds_in, 3.0)
        for payload in (b'{"type": "response.audio.delta", "delta": "' + b"A" * 64000 + b'"}',
                        b'{"response_id":"r","type":"response.output_audio.delta","delta":"'
                        + b"A" * 64000 + b'"}'):
            self.assertIs(tally.server_frame(payload, False), NO_USAGE)
        tally.server_frame(frame({"type": "response.output_audio_transcript.delta",
                                  "delta": "A" * 64000}), False)
        self.assertAlmostEqual(tally.audio_seconds_out, 2.0)
        self.assertEqual((tally.frames_in, tally.frames_out), (4, 3))


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


class Producer:
    """Records what it was told: "pause", "resume", "stop"."""

    def __init__(self) -> None:
        self.told: list[str] = []

    def pauseProducing(self) -> None:
        self.told.append("pause")

    def resumeProducing(self) -> None:
        self.told.append("resume")

    def stopProducing(self) -> None:
        self.told.append("stop")


@implementer(ILeg)
class FakeLeg:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed: tuple[int, str] | None = None
        self.dropped = False
        self.producer = Producer()
        #: The producer this leg's output pauses.
        self.source: Producer | None = None

    def send(self, payload: bytes, is_binary: bool) -> None:
        self.sent.append(payload)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def drop(self) -> None:
        self.dropped = True

    def pause_source(self, producer: Producer) -> None:
        self.source = producer


class StallGuardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.inner = Producer()
        self.stalls: list[float] = []
        self.guard = StallGuard(self.inner, self.clock, 10,
                                lambda: self.stalls.append(self.clock.seconds()))

    def test_a_pause_too_long_on_end(self) -> None:
        """Paused 10 s on end: the source is let go and ``stalled`` called once."""
        self.guard.pauseProducing()
        self.clock.advance(9.9)
        self.assertEqual(self.stalls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.stalls, [10])
        self.assertEqual(self.inner.told, ["pause", "resume"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_counted_from_the_last_pause(self) -> None:
        """Resumed pauses do not add up; one timer serves any number of pauses."""
        for _ in range(3):
            self.guard.pauseProducing()
            self.clock.advance(4)
            self.guard.resumeProducing()
        self.guard.pauseProducing()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(9)  # 10 s after the first pause, 9 after the last
        self.assertEqual(self.stalls, [])
        self.clock.advance(1)
        self.assertEqual(self.stalls, [22])

    def test_resumed_or_cancelled_never_fires(self) -> None:
        self.guard.pauseProducing()
        self.guard.resumeProducing()
        self.clock.advance(20)
        self.guard.pauseProducing()
        self.guard.stopProducing()
        self.clock.advance(20)
        self.assertEqual(self.stalls, [])
        self.assertEqual(self.inner.told, ["pause", "resume", "pause", "stop"])


def info_of(key: str | None, session_id: str | None = None) -> SessionInfo:
    return SessionInfo(id=session_id or f"rts_{key}", model="m", provider="p",
                       provider_kind="openai", upstream_model="m", key_id=key,
                       intent="realtime", beta=False)


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.settings = RealtimeSettings(max_sessions=2, max_sessions_per_key=1,
                                         idle_timeout=10, max_duration=100, token_budget=300,
                                         slow_client_timeout=5)
        self.book = SessionBook(self.clock, self.settings, GatewayMetrics(),
                                lambda fields: None)

    def open(self, key: str | None = "k1") -> tuple:
        session = self.successResultOf(self.book.admit(info_of(key)))
        client, upstream = FakeLeg(), FakeLeg()
        session.upstream_ready(upstream)
        session.upstream_message(b'{"type":"session.created","session":{}}', False)
        session.client_opened(client)
        return session, client, upstream

    def test_early_frames_and_limits(self) -> None:
        """Upstream frames before the upgrade are delivered first; limits are per key."""
        session, client, _ = self.open()
        self.assertEqual(client.sent, [b'{"type":"session.created","session":{}}'])
        self.failureResultOf(self.book.admit(info_of("k1", "rts_again")), TooManySessions)
        second, _, _ = self.open("k2")
        self.failureResultOf(self.book.admit(info_of("k3")), TooManySessions)
        second.client_closed(True, 1000, "")
        second.upstream_closed(True, 1000, "")
        self.open("k3")  # an ended session's seat is free again

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

    def test_slow_client_is_dropped(self) -> None:
        """
        A caller that keeps the upstream paused past ``slow_client_timeout`` is dropped and
        recorded with 4008; the upstream is resumed and closed with 1001.
        """
        session, client, upstream = self.open()
        client.source.pauseProducing()
        self.clock.advance(self.settings.slow_client_timeout)
        self.assertTrue(client.dropped)
        self.assertIsNone(client.closed)
        self.assertEqual(upstream.producer.told, ["pause", "resume"])
        self.assertEqual(upstream.closed[0], 1001)
        self.assertEqual(session.client_close[0], 4008)
        session.upstream_message(b'{"type":"response.output_audio.delta","delta":"AA"}', False)
        self.assertEqual(len(client.sent), 1)  # session.created only
        session.client_closed(False, 1006, "aborted")
        self.assertEqual(self.book.active(), [session])
        session.upstream_closed(True, 1000, "")
        [ended] = self.book.recent()
        self.assertEqual((ended.ended_by, ended.as_json()["client_close_code"]),
                         ("slow_client_timeout", 4008))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_client_leaving_during_the_dial(self) -> None:
        session = self.successResultOf(self.book.admit(info_of(None, "rts_x")))
        session.client_closed(False, 1006, "gone")
        upstream = FakeLeg()
        session.upstream_ready(upstream)
        self.assertEqual(upstream.closed[0], 1001)
        self.assertEqual(self.book.active(), [])
