"""
``multipart/form-data`` requests (audio transcriptions and translations, image edits): found
by offsets in the caller's bytes, so that a field can be rewritten (the model) while the file
parts are sent upstream as they came, never decoded or copied whole.
"""

from __future__ import annotations

import re
from typing import Any

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from txgateway.dialects.openai import BadRequest

_NAME = re.compile(rb'(?:^|;)\s*name="([^"]*)"', re.IGNORECASE)
_FILENAME = re.compile(rb'(?:^|;)\s*filename\*?=', re.IGNORECASE)
_BOUNDARY = re.compile(rb'boundary="?([^";]+)"?', re.IGNORECASE)
#: Text fields longer than this are not decoded (no API routes on one).
_TEXT_LIMIT = 4096


@attrs.frozen
class Part:
    name: str
    is_file: bool
    #: Where the part's content starts and ends in the request body.
    start: int
    end: int


@attrs.frozen
class FormRequest:
    """A multipart request: the caller's bytes, its boundary, its parts and its text fields."""

    raw: bytes
    boundary: bytes
    parts: tuple[Part, ...]
    #: The decoded text fields (the first of each name).
    fields: dict[str, str]
    model: str
    stream: bool

    def part(self, name: str) -> Part | None:
        return next((part for part in self.parts if part.name == name), None)

    def upstream_segments(self, upstream_model: str) -> list[memoryview]:
        """The body to send: the caller's, with the model part's content replaced if it must."""
        whole = memoryview(self.raw)
        if upstream_model == self.model:
            return [whole]
        model = self.part("model")
        assert model is not None
        return [whole[:model.start], memoryview(upstream_model.encode()), whole[model.end:]]


def boundary_of(content_type: bytes) -> bytes | None:
    """The boundary of a ``multipart/form-data`` content type, or None for any other type."""
    if not content_type.lower().startswith(b"multipart/form-data"):
        return None
    found = _BOUNDARY.search(content_type)
    return found.group(1) if found else None


def parse_form(raw: bytes, required: tuple[str, ...] = ("model", "file")) -> FormRequest:
    """
    The parts of a multipart body.  The boundary is the body's first line (which the content
    type must agree with: see `boundary_of`); ``required`` parts must be present, and the
    model must be a text field.
    """
    first = raw.find(b"\r\n")
    if not raw.startswith(b"--") or first < 3:
        raise BadRequest("the request body must be multipart/form-data")
    boundary = raw[2:first]
    delimiter = b"\r\n--" + boundary
    parts = []
    fields: dict[str, str] = {}
    position = first + 2
    while True:
        headers_end = raw.find(b"\r\n\r\n", position)
        if headers_end < 0:
            raise BadRequest("the multipart body is truncated")
        start = headers_end + 4
        end = raw.find(delimiter, start)
        if end < 0:
            raise BadRequest("the multipart body is truncated (no closing boundary)")
        part = _part(raw[position:headers_end], start, end)
        parts.append(part)
        if not part.is_file and part.name not in fields and end - start <= _TEXT_LIMIT:
            fields[part.name] = raw[start:end].decode("utf-8", "replace")
        after = end + len(delimiter)
        if raw.startswith(b"--", after):
            break
        if not raw.startswith(b"\r\n", after):
            raise BadRequest("the multipart body has a malformed boundary")
        position = after + 2
    names = {part.name for part in parts}
    for name in required:
        if name not in names:
            raise BadRequest(f"the multipart field '{name}' is required", name)
    model = fields.get("model", "")
    if "model" in required and not model:
        raise BadRequest("you must provide a model parameter", "model")
    return FormRequest(raw, boundary, tuple(parts), fields, model,
                       fields.get("stream", "").lower() == "true")


def _part(head: bytes, start: int, end: int) -> Part:
    for line in head.split(b"\r\n"):
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-disposition":
            name = _NAME.search(value)
            if name is None:
                break
            return Part(name.group(1).decode("utf-8", "replace"),
                        _FILENAME.search(value) is not None, start, end)
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
