"""
Upstream stream framings: server-sent events (finding whole events in a byte stream as it
arrives) and AWS event streams (binary frames, for Bedrock).
"""

from __future__ import annotations

from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError


class EventSplitter:
    """
    Splits an SSE byte stream into runs of whole events, however the bytes were cut.

    ``feed`` returns every complete event received so far (terminators included, CRLF line
    ends turned into LF) and keeps the incomplete tail for the next call.
    """

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> bytes:
        data = self._tail + data
        held = b""
        if b"\r" in data:
            if data.endswith(b"\r"):  # maybe the first half of a CRLF
                data, held = data[:-1], b"\r"
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        if end < 0:
            self._tail = data + held
            return b""
        self._tail = data[end + 2 :] + held
        return data[: end + 2]

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return self._tail


def events(run: bytes) -> list[bytes]:
    """The events of a run returned by `EventSplitter.feed`, each without its blank line."""
    return [event for event in run.split(b"\n\n") if event]


def data_of(event: bytes) -> bytes:
    """The ``data:`` payload of an event (its data lines joined by LF)."""
    lines = [line[5:].removeprefix(b" ") for line in event.split(b"\n")
             if line.startswith(b"data:")]
    return b"\n".join(lines)


def event_name(event: bytes) -> bytes:
    """The ``event:`` name of an event, or b"" when it has none."""
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            return line[6:].strip()
    return b""


class EventStreamCorrupt(ValueError):
    """
    An AWS event stream frame is malformed (a CRC mismatch, an impossible length);
    ``messages`` holds the good ones decoded before it in the same feed.
    """

    def __init__(self, problem: str, messages: list[EventStreamMessage]) -> None:
        super().__init__(problem)
        self.messages = messages


class AwsEventStreamDecoder:
    """
    Splits an AWS event stream (``application/vnd.amazon.eventstream``) into messages as the
    bytes arrive, however they were cut, several messages per chunk or one across many.

    botocore's `EventStreamBuffer` does the binary work: it decodes incrementally, checks the
    prelude and message CRC32s, bounds header and payload lengths, and reads every header
    type; each message has ``headers`` (a dict: ``:event-type``, ``:message-type`` ...) and
    ``payload`` (bytes).  After `EventStreamCorrupt` the stream cannot be resynchronised.
    """

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        """The messages completed by ``data``; `EventStreamCorrupt` at a malformed one."""
        self._buffer.add_data(data)
        messages = []
        try:
            messages.extend(self._buffer)
        except ParserError as error:
            raise EventStreamCorrupt(str(error), messages) from None
        return messages
