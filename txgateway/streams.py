"""
Server-sent events: finding whole events in a byte stream as it arrives.  (AWS's binary
event streams are `txgateway.plugins.bedrock.aws`'s.)
"""

from __future__ import annotations

#: The largest SSE event read whole (a Responses API ``response.completed`` carries the whole
#: answer, an image generation's events a base64 image): past it the stream is refused.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class EventTooLarge(ValueError):
    """An event grew past the limit: an endless or broken stream, not one to hold."""


class EventSplitter:
    """
    Splits an SSE byte stream into runs of whole events, however the bytes were cut.

    ``feed`` returns every complete event received so far (terminators included, CRLF line
    ends turned into LF) and keeps the incomplete tail for the next call; a tail past
    ``max_event_bytes`` raises `EventTooLarge`.  The tail is kept in pieces and only the
    new bytes are searched, so an event arriving in many reads costs linear time.
    """

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._limit = max_event_bytes
        self._tail: list[bytes] = []  # LF line ends; never containing a blank line
        self._tail_size = 0
        self._held_cr = False  # the stream's last byte was a CR: maybe half a CRLF

    def feed(self, data: bytes) -> bytes:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if b"\r" in data:
            if data.endswith(b"\r"):
                data = data[:-1]
                self._held_cr = True
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(b"\n\n")
        tail = self._tail
        if tail:
            if end < 0 and not (data[:1] == b"\n" and tail[-1].endswith(b"\n")):
                self._keep(data)
                return b""
            data = b"".join(tail) + data
            tail.clear()
            self._tail_size = 0
            end = data.rfind(b"\n\n")
        if end < 0:
            self._keep(data)
            return b""
        if end + 2 < len(data):
            self._keep(data[end + 2:])
            return data[: end + 2]
        return data

    def _keep(self, data: bytes) -> None:
        if data:
            self._tail.append(data)
            self._tail_size += len(data)
            if self._tail_size > self._limit:
                raise EventTooLarge(f"an upstream event exceeds {self._limit} bytes")

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        if len(self._tail) > 1:
            self._tail[:] = [b"".join(self._tail)]
        return (self._tail[0] if self._tail else b"") + (b"\r" if self._held_cr else b"")


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
