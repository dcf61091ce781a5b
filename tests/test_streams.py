"""SSE splitting, however the bytes are cut."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txgateway.streams import EventSplitter, EventTooLarge, data_of, events

STREAM = (b'data: {"a": 1}\n\n'
          b": comment\n\n"
          b'event: message\ndata: {"b":\ndata: 2}\n\n'
          b"data: [DONE]\n\n")


class EventSplitterTests(SynchronousTestCase):
    def check_cuts(self, stream: bytes) -> None:
        """Every way of cutting the stream in two or three gives back the same events."""
        expected = events(stream.replace(b"\r\n", b"\n"))
        for i in range(len(stream)):
            for j in range(i, len(stream), 7):
                splitter = EventSplitter()
                run = b"".join(splitter.feed(part)
                               for part in (stream[:i], stream[i:j], stream[j:]))
                self.assertEqual(events(run), expected, (i, j))
                self.assertEqual(splitter.pending, b"")

    def test_lf(self) -> None:
        self.check_cuts(STREAM)

    def test_crlf(self) -> None:
        self.check_cuts(STREAM.replace(b"\n", b"\r\n"))

    def test_byte_by_byte(self) -> None:
        for stream in (STREAM, STREAM.replace(b"\n", b"\r\n")):
            splitter = EventSplitter()
            run = b"".join(splitter.feed(stream[i:i + 1]) for i in range(len(stream)))
            self.assertEqual(events(run), events(stream.replace(b"\r\n", b"\n")))

    def test_event_size_limit(self) -> None:
        """An event that grows past the limit (an endless one) is refused; events up to it,
        in as many pieces as they come, are whole."""
        splitter = EventSplitter(max_event_bytes=1000)
        event = b"data: " + b"x" * 990 + b"\n\n"
        self.assertEqual(b"".join(splitter.feed(event[i:i + 10])
                                  for i in range(0, len(event), 10)), event)
        splitter.feed(b"data: " + b"y" * 900)
        with self.assertRaises(EventTooLarge):
            splitter.feed(b"y" * 200)

    def test_incomplete_event_waits(self) -> None:
        splitter = EventSplitter()
        self.assertEqual(splitter.feed(b"data: 1\n\ndata: 2\n"), b"data: 1\n\n")
        self.assertEqual(splitter.pending, b"data: 2\n")

    def test_data_of(self) -> None:
        self.assertEqual([data_of(e) for e in events(STREAM)],
                         [b'{"a": 1}', b"", b'{"b":\n2}', b"[DONE]"])
