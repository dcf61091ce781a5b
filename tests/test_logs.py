"""The access log's writer: whole lines, written in batches bounded in time and in size."""

from io import BytesIO

import orjson
from twisted.trial.unittest import SynchronousTestCase

from txgateway.logs import JSONLinesWriter


class CountingSink(BytesIO):
    """A binary stream that keeps each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes, /) -> int:
        self.writes.append(bytes(data))
        return super().write(data)


class JSONLinesWriterTests(SynchronousTestCase):
    def test_lines_wait_for_flush(self) -> None:
        sink = CountingSink()
        writer = JSONLinesWriter(sink, clock=lambda: 1764790000.25)
        writer({"path": "/v1/chat/completions", "status": 200})
        writer({"path": "/health", "status": 200})
        self.assertEqual(sink.writes, [])
        writer.flush()
        self.assertEqual(len(sink.writes), 1)
        lines = [orjson.loads(line) for line in sink.getvalue().splitlines()]
        self.assertEqual(lines, [
            {"time": "2025-12-03T19:26:40.250000Z", "path": "/v1/chat/completions",
             "status": 200},
            {"time": "2025-12-03T19:26:40.250000Z", "path": "/health", "status": 200},
        ])

    def test_written_once_max_bytes_wait(self) -> None:
        """Memory stays bounded between flushes, and every write holds whole lines."""
        sink = CountingSink()
        writer = JSONLinesWriter(sink, clock=lambda: 1764790000.0, max_bytes=1000)
        for number in range(30):
            writer({"path": "/v1/chat/completions", "n": number, "pad": "x" * 60})
        self.assertGreater(len(sink.writes), 1)
        for data in sink.writes:
            self.assertGreaterEqual(len(data), 1000)
            self.assertLess(len(data), 1200)
            self.assertTrue(data.endswith(b"\n"))
        writer.flush()
        numbers = [orjson.loads(line)["n"] for line in sink.getvalue().splitlines()]
        self.assertEqual(numbers, list(range(30)))
        writer.flush()  # nothing waits: no empty write
        self.assertEqual(b"".join(sink.writes), sink.getvalue())
        self.assertNotIn(b"", sink.writes)
