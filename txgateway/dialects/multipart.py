"""
``multipart/form-data`` requests (audio transcriptions and translations, image edits, file
uploads), parsed as they arrive: `FormParser` is fed the body chunk by chunk and notes each
part's name, the small text fields and where the model's value lies, so that the form can be
routed and its model rewritten while the file parts go upstream as they came, never decoded
or held whole.  Given a `FormParts`, it also hands over each part's headers and content as
they come (the files API rewrites a batch file's lines on the way), holding nothing but a
delimiter's length of content.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from txgateway.dialects.openai import BadRequest

_PARAM = re.compile(rb';\s*([a-z*]+)\s*=\s*(?:"([^"]*)"|([^;\s]*))', re.IGNORECASE)
_BOUNDARY = re.compile(rb'boundary="?([^";]+)"?', re.IGNORECASE)
#: Text fields longer than this are not decoded (no API routes on one).
_TEXT_LIMIT = 4096
#: A part's headers longer than this are refused.
_HEADERS_LIMIT = 16 * 1024

# What the parser expects next.
_OPENING, _HEADERS, _CONTENT, _AFTER_DELIMITER, _DONE = range(5)


def boundary_of(content_type: bytes) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type, or None for any other type."""
    if not content_type.lower().startswith(b"multipart/form-data"):
        return None
    found = _BOUNDARY.search(content_type)
    return found.group(1) if found else None


@attrs.frozen
class PartHead:
    """A part's headers, as they came (``raw``, without the blank line after them) and read."""

    raw: bytes
    name: str
    #: Set for file parts (possibly empty), None for text fields.
    filename: str | None
    #: Where the part's content starts in the body.
    start: int


class FormParts(Protocol):
    """What a `FormParser` hands each part to as it reads; any call may raise to stop it."""

    def part_started(self, head: PartHead) -> None: ...

    def part_data(self, chunk: bytes) -> None:
        """A piece of the current part's content."""

    def part_ended(self) -> None: ...


class FormParser:
    """
    A multipart body parsed incrementally, for its boundary (from the content type): `feed`
    each chunk, then `close`; both raise `BadRequest` on a malformed form.  Offsets are from
    the start of the body.  ``parts``, if given, is handed each part as it is read.
    """

    def __init__(self, boundary: bytes, parts: FormParts | None = None) -> None:
        self._parts = parts
        self._opening = b"--" + boundary + b"\r\n"
        self._delimiter = b"\r\n--" + boundary
        self._state = _OPENING
        self._pending = b""  # bytes fed but not parsed yet
        self._offset = 0  # where ``_pending`` starts in the body
        self._name = ""
        self._start = 0  # where the current part's content starts
        self._text: list[bytes] | None = None  # the current text part's content, if short
        self._text_size = 0
        #: The decoded text fields (the first of each name, up to 4 KiB each).
        self.fields: dict[str, str] = {}
        #: The name of every part begun.
        self.names: set[str] = set()
        #: Where the first ``model`` part's content starts and ends, once read.
        self.model_span: tuple[int, int] | None = None
        #: Whether the part being read now is a file.
        self.in_file = False
        #: Whether the closing delimiter has been read.
        self.done = False

    def feed(self, data: bytes) -> None:
        pending = self._pending + data if self._pending else data
        position = 0
        while True:
            state = self._state
            if state == _CONTENT:
                position = self._content(pending, position)
                if self._state == _CONTENT:
                    break
            elif state == _HEADERS:
                end = pending.find(b"\r\n\r\n", position)
                if end < 0:
                    if len(pending) - position > _HEADERS_LIMIT:
                        raise BadRequest("a multipart part's headers are too long")
                    break
                self._begin_part(pending[position:end], self._offset + end + 4)
                position = end + 4
            elif state == _AFTER_DELIMITER:
                if len(pending) - position < 2:
                    break
                after = pending[position:position + 2]
                if after == b"--":
                    self._state, self.done = _DONE, True
                elif after == b"\r\n":
                    self._state = _HEADERS
                else:
                    raise BadRequest("the multipart body has a malformed boundary")
                position += 2
            elif state == _OPENING:
                size = len(self._opening)
                if len(pending) < size:
                    if not self._opening.startswith(pending):
                        raise _not_opened()
                    break
                if not pending.startswith(self._opening):
                    raise _not_opened()
                self._state = _HEADERS
                position = size
            else:  # _DONE: the epilogue, ignored
                position = len(pending)
                break
        self._offset += position
        self._pending = pending[position:]

    def close(self) -> None:
        """The body has ended: it must have ended the form."""
        if not self.done:
            raise BadRequest("the multipart body is truncated (no closing boundary)")

    def _content(self, pending: bytes, position: int) -> int:
        """Reads content up to the delimiter (or as far as it cannot start); the new position."""
        end = pending.find(self._delimiter, position)
        if end < 0:
            # Keep back what could be the start of a delimiter split across chunks.
            keep = min(len(self._delimiter) - 1, len(pending) - position)
            self._take(pending, position, len(pending) - keep)
            return len(pending) - keep
        self._take(pending, position, end)
        self._end_part(self._offset + end)
        self._state = _AFTER_DELIMITER
        return end + len(self._delimiter)

    def _begin_part(self, raw: bytes, start: int) -> None:
        head = _read_head(raw, start)
        self._name, self.in_file = head.name, head.filename is not None
        self.names.add(self._name)
        self._start = start
        self._text = None if self.in_file or self._name in self.fields else []
        self._text_size = 0
        self._state = _CONTENT
        if self._parts is not None:
            self._parts.part_started(head)

    def _take(self, pending: bytes, start: int, end: int) -> None:
        if end <= start:
            return
        if self._parts is not None:
            self._parts.part_data(pending[start:end])
        if self._text is None:
            return
        self._text_size += end - start
        if self._text_size > _TEXT_LIMIT:
            self._text = None
        else:
            self._text.append(pending[start:end])

    def _end_part(self, end: int) -> None:
        if self._text is not None:
            self.fields[self._name] = b"".join(self._text).decode("utf-8", "replace")
            if self._name == "model" and self.model_span is None:
                self.model_span = (self._start, end)
        self._text = None
        if self._parts is not None:
            self._parts.part_ended()
        self.in_file = False


def _not_opened() -> BadRequest:
    return BadRequest("the multipart body does not start with its content type's boundary")


def _read_head(raw: bytes, start: int) -> PartHead:
    for line in raw.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() != b"content-disposition":
            continue
        params = {match.group(1).lower(): match.group(2) if match.group(2) is not None
                  else match.group(3) for match in _PARAM.finditer(value)}
        name = params.get(b"name")
        if name is None:
            break
        filename = params.get(b"filename", params.get(b"filename*"))
        return PartHead(raw, name.decode("utf-8", "replace"),
                        None if filename is None else filename.decode("utf-8", "replace"),
                        start)
    raise BadRequest("a multipart part has no Content-Disposition name")


@implementer(IBodyProducer)
class SegmentsProducer:
    """
    A request body written from memory segments a slice at a time, a cooperator turn apart,
    pausable by the connection: a large upload neither blocks the reactor nor is copied whole.
    """

    slice_size = 64 * 1024

    def __init__(self, segments: list[memoryview], cooperate: Any = task.cooperate) -> None:
        self._segments = segments
        self._cooperate = cooperate
        self._task: Any = None
        self.length = sum(len(segment) for segment in segments)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self._task = self._cooperate(self._write(consumer))
        done = self._task.whenDone()

        def stopped(reason: Any) -> Deferred[None]:
            reason.trap(task.TaskStopped)
            return Deferred()  # the agent has given up on the body: never fire

        return done.addCallbacks(lambda _: None, stopped)

    def _write(self, consumer: Any) -> Any:
        size = self.slice_size
        for segment in self._segments:
            for offset in range(0, len(segment), size):
                consumer.write(bytes(segment[offset:offset + size]))
                yield None

    def pauseProducing(self) -> None:
        self._task.pause()

    def resumeProducing(self) -> None:
        self._task.resume()

    def stopProducing(self) -> None:
        try:
            self._task.stop()
        except task.TaskDone:
            pass
