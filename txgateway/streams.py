"""
Server-sent events: finding whole events in a byte stream as it arrives.  (AWS's binary
event streams are `txgateway.plugins.bedrock.aws`'s.)
"""

from __future__ import annotations


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
