"""
The relay at the frame level: the scanner split at every byte boundary, its limits and the
frames Autobahn writes between relayed ones, and a recorded corpus of GA and beta sessions
relayed both ways through the gateway, byte for byte.
"""

from __future__ import annotations

import itertools
import os
import random
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase

from tests.realtime_corpus import (
    AUDIO,
    BINARY,
    CONTINUATION,
    PING,
    TEXT,
    Frame,
    connect_raw,
    data_frames,
    encode,
    pieces,
    session,
    start_raw_upstream,
)
from tests.realtime_harness import RealtimeTestCase, until
from txgateway.realtime.events import append_audio_chars
from txgateway.realtime.frames import OPEN, Relay, unmask
from txgateway.realtime.tally import SessionTally


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class Source:
    """What the relay uses of the Autobahn protocol it reads for."""

    def __init__(self) -> None:
        self.state = OPEN
        self.control: list[bytes] = []
        self.failed: list[str] = []

    def _dataReceived(self, data: bytes) -> None:  # noqa: N802 (Autobahn's name)
        self.control.append(data)

    def _protocol_violation(self, reason: str) -> None:
        self.failed.append("1002")
        self.state = 2

    def _max_message_size_exceeded(self, size: int, limit: int, reason: str) -> None:
        self.failed.append("1009")
        self.state = 2


class Sink:
    def __init__(self) -> None:
        self.state = OPEN
        self.transport = Transport()
        self.dropped = False

    def dropConnection(self, abort: bool) -> None:  # noqa: N802
        self.dropped = True


def relay(masked: bool = True, limit: int = 0,
          drop: bytes | None = None) -> tuple[Relay, Source, Sink, list[Any]]:
    """A scanner whose meter records each message, and asks to drop those equal to ``drop``."""
    source, sink, messages = Source(), Sink(), []

    def meter(frame: bytes, start: int, end: int, is_binary: bool, mask: bytes | None) -> bool:
        payload = frame[start:end] if mask is None else unmask(frame, start, end, mask)
        messages.append((end - start if is_binary else payload, is_binary))
        return payload == drop

    return Relay(source, sink, masked, limit, meter), source, sink, messages


STREAM = [
    Frame(TEXT, b'{"type":"input_audio_buffer.append","audio":"AAAA"}'),
    Frame(BINARY, b""),
    Frame(TEXT, b"x" * 126),
    Frame(TEXT, b'{"type":"resp', fin=False),
    Frame(PING, b"ping!"),
    Frame(CONTINUATION, b"", fin=False),
    Frame(CONTINUATION, b'onse.done"}'),
    Frame(BINARY, bytes(range(200)), fin=False),
    Frame(CONTINUATION, b"\x00\x01"),
    Frame(8, b"\x03\xe8"),
]


def expected_messages() -> list[Any]:
    return [(STREAM[0].payload, False), (0, True), (b"x" * 126, False),
            (b'{"type":"response.done"}', False), (202, True)]


class ScannerTests(SynchronousTestCase):
    def stream(self, masked: bool) -> tuple[bytes, bytes, list[bytes]]:
        """The wire bytes, those of its data frames, and its control frames."""
        rng = random.Random(7)
        wire = [encode(f, bytes(rng.randrange(256) for _ in range(4)) if masked else None)
                for f in STREAM]
        data = b"".join(w for w, f in zip(wire, STREAM, strict=True) if f.opcode < 8)
        control = [w for w, f in zip(wire, STREAM, strict=True) if f.opcode >= 8]
        return b"".join(wire), data, control

    def test_split_at_every_byte_boundary(self) -> None:
        """However the reads cut it, data frames go out as they came, metered once each."""
        for masked in (True, False):
            wire, data, control = self.stream(masked)
            for cut in range(len(wire) + 1):
                scanner, source, sink, messages = relay(masked)
                scanner.feed(wire[:cut])
                scanner.feed(wire[cut:])
                self.assertEqual(b"".join(sink.transport.written), data, (masked, cut))
                self.assertEqual(source.control, control, cut)
                self.assertEqual(messages, expected_messages(), cut)

    def test_split_twice_and_byte_by_byte(self) -> None:
        wire, data, control = self.stream(True)
        for first, second in itertools.combinations(range(0, len(wire), 5), 2):
            scanner, source, sink, messages = relay()
            for part in (wire[:first], wire[first:second], wire[second:]):
                scanner.feed(part)
            self.assertEqual(b"".join(sink.transport.written), data)
            self.assertEqual(messages, expected_messages())
        scanner, source, sink, messages = relay()
        for index in range(len(wire)):
            scanner.feed(wire[index:index + 1])
        self.assertEqual(b"".join(sink.transport.written), data)
        self.assertEqual(source.control, control)

    def test_whole_reads_are_written_as_they_are(self) -> None:
        """A read of whole data frames is one write of the same bytes object: no copy."""
        wire = encode(STREAM[0], b"abcd") + encode(STREAM[2], b"efgh")
        scanner, _, sink, _ = relay()
        scanner.feed(wire)
        self.assertEqual(len(sink.transport.written), 1)
        self.assertIs(sink.transport.written[0], wire)

    def test_a_frame_over_the_limit_is_refused_before_a_byte_of_it_goes(self) -> None:
        scanner, source, sink, messages = relay(limit=100)
        wire = encode(Frame(TEXT, b"a" * 50), b"abcd") + encode(Frame(TEXT, b"b" * 101), b"abcd")
        scanner.feed(wire + encode(Frame(8, b"\x03\xe8"), b"abcd"))
        self.assertEqual(source.failed, ["1009"])
        self.assertEqual(b"".join(sink.transport.written), wire[:56])
        self.assertEqual(len(messages), 1)
        self.assertEqual(len(source.control), 1)  # the close reply still reaches Autobahn

    def test_a_fragmented_message_over_the_limit_is_refused_at_its_fragment(self) -> None:
        scanner, source, sink, _ = relay(limit=100)
        first = encode(Frame(BINARY, b"a" * 60, fin=False), b"abcd")
        scanner.feed(first + encode(Frame(CONTINUATION, b"b" * 60), b"abcd"))
        self.assertEqual(source.failed, ["1009"])
        self.assertEqual(b"".join(sink.transport.written), first)

    def test_malformed_frames_are_protocol_errors(self) -> None:
        for wire in (encode(Frame(TEXT, b"x"), None),  # a caller's frame unmasked
                     encode(Frame(CONTINUATION, b"x"), b"abcd"),  # continuing nothing
                     encode(Frame(3, b"x"), b"abcd"),  # a reserved opcode
                     bytes((0xC1, 0x80)) + b"abcd"):  # RSV1 without an extension
            scanner, source, sink, _ = relay()
            scanner.feed(wire)
            self.assertEqual(source.failed, ["1002"], wire)
            self.assertEqual(sink.transport.written, [])

    def test_autobahn_frames_wait_for_the_relayed_frame_and_message(self) -> None:
        """A ping waits for the frame it would split; a message waits for the message."""
        scanner, _, sink, _ = relay(masked=False)
        first = encode(Frame(TEXT, b"a" * 300, fin=False), None)
        scanner.feed(first[:100])
        ping, event = encode(Frame(PING, b""), None), encode(Frame(TEXT, b"{}"), None)
        self.assertTrue(scanner.holds(event))
        self.assertTrue(scanner.holds(ping))
        scanner.feed(first[100:])
        self.assertEqual(sink.transport.written[-1], ping)  # the frame ended, not the message
        last = encode(Frame(CONTINUATION, b"b"), None)
        scanner.feed(last)
        self.assertEqual(sink.transport.written[-2:], [last, event])
        self.assertFalse(scanner.holds(event))

    def test_a_source_lost_inside_a_frame_drops_the_sink(self) -> None:
        scanner, _, sink, _ = relay()
        scanner.feed(encode(Frame(BINARY, b"a" * 300), b"abcd")[:50])
        scanner.lost()
        self.assertTrue(sink.dropped)

    def test_frames_after_the_sink_closed_are_not_written(self) -> None:
        scanner, _, sink, messages = relay()
        sink.state = 2
        scanner.feed(encode(Frame(TEXT, b"{}"), b"abcd"))
        self.assertEqual(sink.transport.written, [])

    def test_messages_after_the_sink_closed_are_still_metered(self) -> None:
        """Usage the upstream reports after the caller left counts, even split over reads."""
        scanner, _, sink, messages = relay(masked=False)
        sink.state = 2
        data = encode(Frame(TEXT, b'{"type":"response.done"}'), None)
        scanner.feed(data[:5])
        scanner.feed(data[5:])
        self.assertEqual(messages, [(b'{"type":"response.done"}', False)])
        self.assertEqual(sink.transport.written, [])

    def test_a_message_the_meter_refuses_is_dropped_from_between_the_others(self) -> None:
        scanner, _, sink, messages = relay(drop=b"no")
        frames = [encode(Frame(TEXT, payload), b"abcd") for payload in (b"a", b"no", b"b")]
        scanner.feed(b"".join(frames))
        self.assertEqual(b"".join(sink.transport.written), frames[0] + frames[2])
        self.assertEqual(len(messages), 3)


class MaskedAudioTests(SynchronousTestCase):
    def test_unmasking_xors_each_byte_with_its_place_in_the_mask(self) -> None:
        data, mask = os.urandom(1031), os.urandom(4)
        for start, end, phase in ((0, 1031, 0), (3, 1000, 2), (7, 8, 3), (5, 5, 1)):
            expected = bytes(byte ^ mask[(phase + i) % 4]
                             for i, byte in enumerate(data[start:end]))
            self.assertEqual(unmask(data, start, end, mask, phase), expected)
        self.assertEqual(unmask(data, 2, 9, None), data[2:9])

    def test_masked_appends_measure_as_unmasked_ones(self) -> None:
        events = [
            b'{"type":"input_audio_buffer.append","audio":"' + AUDIO.encode() + b'"}',
            b'{"type": "input_audio_buffer.append", "audio": "' + AUDIO.encode() + b'"}',
            b'{"type":"input_audio_buffer.append","audio":"' + AUDIO.encode()
            + b'","event_id":"e1"}',
            b'{"event_id":"e1","type":"input_audio_buffer.append","audio":"AAAA"}',
            b'{"type":"input_audio_buffer.append","audio":"AAAA","x":"' + b"B" * 400 + b'"}',
            b'{"type":"response.create","response":{"instructions":"' + b"z" * 300 + b'"}}',
            b'{"type":"input_audio_buffer.append"}' + b" " * 300,
        ]
        for payload in events:
            plain = SessionTally(0.0)
            plain.client_message(payload, 0, len(payload), False, None)
            self.assertEqual(plain.audio_seconds_in,
                             append_audio_chars(payload) * 3 // 4 / 48000, payload[:60])
            for _ in range(8):
                mask = os.urandom(4)
                frame = b"\x00" * 3 + unmask(payload, 0, len(payload), mask) + b"\x00"
                masked = SessionTally(0.0)
                masked.client_message(frame, 3, 3 + len(payload), False, mask)
                self.assertEqual(masked.audio_seconds_in, plain.audio_seconds_in, payload[:60])


class CorpusTests(RealtimeTestCase):
    """Recorded sessions relayed both ways, compared frame by frame with what was sent."""

    start_fake = staticmethod(start_raw_upstream)

    async def relay(self, beta: bool) -> None:
        from_client, from_upstream = session(beta)
        protocols = "realtime, openai-beta.realtime-v1" if beta else "realtime"
        opened, connector, factory = connect_raw(self.port, protocols)
        client = await opened
        upstream = await self.fake.opened
        self.fake.opened = None
        client_wire = [encode(f, os.urandom(4)) for f in from_client]
        upstream_wire = [encode(f, None) for f in from_upstream]
        for up, down in itertools.zip_longest(pieces(b"".join(client_wire), 1),
                                              pieces(b"".join(upstream_wire), 2)):
            if up:
                client.transport.write(up)
            if down:
                upstream.transport.write(down)
            await deferLater(reactor, 0, lambda: None)
        sent_up = [w for w, f in zip(client_wire, from_client, strict=True) if f.opcode < 8]
        sent_down = [w for w, f in zip(upstream_wire, from_upstream, strict=True)
                     if f.opcode < 8]

        def relayed(peer: Any) -> list[bytes]:
            return [raw for frame, raw in peer.frames if frame.opcode < 8]

        await until(lambda: len(relayed(upstream)) >= len(sent_up)
                    and len(relayed(client)) >= len(sent_down))
        # Byte for byte, in order: the caller's masks unchanged, fragments as they were.
        self.assertEqual(relayed(upstream), sent_up)
        self.assertEqual(relayed(client), sent_down)
        # Each ping between fragments was answered by the gateway, not relayed.
        pongs = [frame.payload for frame, _ in client.frames if frame.opcode == 10]
        self.assertEqual(pongs, [b"are you there"] * 2)
        self.assertNotIn(PING, [frame.opcode for frame, _ in upstream.frames])
        # The tally is what it is when Autobahn hands over whole messages.
        [live] = self.service.gateway.realtime.active()
        reference = SessionTally(0)
        for payload, binary in messages(from_client):
            reference.client_frame(payload, binary)
        for payload, binary in messages(from_upstream):
            reference.server_frame(payload, binary)
        self.assertEqual(live.tally.as_json(), reference.as_json())
        self.assertEqual(live.tally.usage.total_tokens, 2 * 253 + 22)
        self.assertGreater(live.tally.audio_seconds_in, 0.1)
        connector.disconnect()
        await factory.lost
        await until(lambda: not self.service.gateway.realtime.active())

    async def test_a_ga_session_relays_byte_for_byte(self) -> None:
        await self.relay(beta=False)

    async def test_a_beta_session_relays_byte_for_byte(self) -> None:
        await self.relay(beta=True)


def messages(frames: list[Frame]) -> list[tuple[bytes, bool]]:
    """Data frames joined into messages, as Autobahn would deliver them."""
    out, parts, binary = [], [], False
    for frame in data_frames(frames):
        if frame.opcode:
            binary, parts = frame.opcode == BINARY, []
        parts.append(frame.payload)
        if frame.fin:
            out.append((b"".join(parts), binary))
    return out
