"""The AWS event-stream decoder: frames however the bytes are cut, CRCs checked."""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from tests.fake_bedrock import event, exception, frame
from txgateway.plugins.bedrock.aws import AwsEventStreamDecoder, EventStreamCorrupt

#: AWS's own "empty_message" test vector (aws-c-event-stream): prelude CRC 0x05c248eb,
#: message CRC 0x7d98c8ff.
EMPTY_MESSAGE = base64.b64decode("AAAAEAAAAAAFwkjrfZjI/w==")
STREAM = (event("messageStart", {"role": "assistant"})
          + event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}})
          + exception("throttlingException", "Too many requests")
          + EMPTY_MESSAGE)


def decoded(decoder: AwsEventStreamDecoder, *parts: bytes) -> list[tuple[dict, bytes]]:
    return [(message.headers, message.payload) for part in parts
            for message in decoder.feed(part)]


class AwsEventStreamDecoderTests(SynchronousTestCase):
    def test_aws_vector(self) -> None:
        """The fake's encoder and the decoder agree with AWS's published bytes."""
        self.assertEqual(frame({}, b""), EMPTY_MESSAGE)
        self.assertEqual(decoded(AwsEventStreamDecoder(), EMPTY_MESSAGE), [({}, b"")])

    def test_several_frames_per_chunk(self) -> None:
        messages = decoded(AwsEventStreamDecoder(), STREAM)
        self.assertEqual([headers.get(":event-type") for headers, _ in messages],
                         ["messageStart", "contentBlockDelta", None, None])
        headers, payload = messages[2]
        self.assertEqual((headers[":message-type"], headers[":exception-type"], payload),
                         ("exception", "throttlingException", b'{"message":"Too many requests"}'))

    def test_split_anywhere(self) -> None:
        """Every cut in two or three pieces gives back the same messages, none early."""
        expected = decoded(AwsEventStreamDecoder(), STREAM)
        for i in range(len(STREAM)):
            for j in range(i, len(STREAM), 13):
                decoder = AwsEventStreamDecoder()
                self.assertEqual(decoded(decoder, STREAM[:i], STREAM[i:j], STREAM[j:]),
                                 expected, (i, j))

    def test_byte_by_byte(self) -> None:
        decoder = AwsEventStreamDecoder()
        got = []
        for index in range(len(STREAM)):
            got.extend(decoder.feed(STREAM[index:index + 1]))
        self.assertEqual([(m.headers, m.payload) for m in got],
                         decoded(AwsEventStreamDecoder(), STREAM))

    def test_bad_message_crc(self) -> None:
        """A flipped payload byte fails the message CRC; the frames before it are kept."""
        bad = bytearray(STREAM)
        first = len(event("messageStart", {"role": "assistant"}))
        bad[first + 30] ^= 0x01
        with self.assertRaises(EventStreamCorrupt) as raised:
            AwsEventStreamDecoder().feed(bytes(bad))
        self.assertIn("Checksum mismatch", str(raised.exception))
        self.assertEqual([m.headers[":event-type"] for m in raised.exception.messages],
                         ["messageStart"])

    def test_bad_prelude_crc(self) -> None:
        """A corrupt length is caught by the prelude CRC before it is trusted."""
        bad = bytearray(STREAM)
        bad[2] ^= 0x40
        decoder = AwsEventStreamDecoder()
        with self.assertRaises(EventStreamCorrupt):
            decoder.feed(bytes(bad[:12]))

    def test_incomplete_frame_waits(self) -> None:
        decoder = AwsEventStreamDecoder()
        self.assertEqual(decoder.feed(STREAM[:20]), [])
        self.assertEqual(len(decoder.feed(STREAM[20:])), 4)
