"""
A ``multipart/form-data`` body read as it arrives (`FormReader.feed`, then `finish`): each
part's headers, then its content in pieces, handed to a `FormParts` as they come.  Nothing
but the current part's headers and a delimiter's length of content is held, so an upload of
any size can be rewritten on its way upstream (the files API's batch input).
"""

from __future__ import annotations

import re
from typing import Protocol

import attrs

from txgateway.dialects.openai import BadRequest

_PARAM = re.compile(rb';\s*([a-z*]+)\s*=\s*(?:"([^"]*)"|([^;\s]*))', re.IGNORECASE)
#: Part headers longer than this are refused (no form needs them).
HEAD_LIMIT = 16 * 1024


@attrs.frozen
class PartHead:
    """A part's headers: as they came (``raw``, without the blank line), and read."""

    raw: bytes
    name: str
    #: Set for file parts (possibly empty), None for text fields.
    filename: str | None


class FormParts(Protocol):
    """What a `FormReader` tells as it reads; any of these may raise to stop the read."""

    def started(self, head: PartHead) -> None: ...

    def data(self, chunk: bytes) -> None: ...

    def ended(self) -> None: ...


class FormReader:
    """
    Reads one multipart body with ``boundary`` (from the request's content type) into
    ``parts``; raises `BadRequest` when the body is malformed.
    """

    def __init__(self, boundary: bytes, parts: FormParts) -> None:
        self._parts = parts
        self._opening = b"--" + boundary
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray()
        self._state = self._preamble

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while self._buffer and self._state():
            pass

    def finish(self) -> None:
        if self._state != self._epilogue:
            raise BadRequest("the multipart body is truncated (no closing boundary)")

    def _preamble(self) -> bool:
        found = self._buffer.find(self._opening)
        if found < 0:
            # Whatever precedes the first boundary is ignored, all but what may begin it.
            del self._buffer[:max(0, len(self._buffer) - len(self._opening))]
            return False
        del self._buffer[:found + len(self._opening)]
        self._state = self._after_boundary
        return True

    def _after_boundary(self) -> bool:
        if len(self._buffer) < 2:
            return False
        mark = bytes(self._buffer[:2])
        if mark == b"--":
            self._state = self._epilogue
        elif mark == b"\r\n":
            del self._buffer[:2]
            self._state = self._head
        else:
            raise BadRequest("the multipart body has a malformed boundary")
        return True

    def _head(self) -> bool:
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > HEAD_LIMIT:
                raise BadRequest("a multipart part's headers are too long")
            return False
        raw = bytes(self._buffer[:end])
        del self._buffer[:end + 4]
        self._parts.started(_read_head(raw))
        self._state = self._content
        return True

    def _content(self) -> bool:
        delimiter = self._delimiter
        found = self._buffer.find(delimiter)
        if found < 0:
            # Keep what could be the start of a delimiter split across chunks.
            ready = len(self._buffer) - len(delimiter) + 1
            if ready > 0:
                self._parts.data(bytes(self._buffer[:ready]))
                del self._buffer[:ready]
            return False
        if found:
            self._parts.data(bytes(self._buffer[:found]))
        del self._buffer[:found + len(delimiter)]
        self._parts.ended()
        self._state = self._after_boundary
        return True

    def _epilogue(self) -> bool:
        self._buffer.clear()
        return False


def _read_head(raw: bytes) -> PartHead:
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
                        None if filename is None else filename.decode("utf-8", "replace"))
    raise BadRequest("a multipart part has no Content-Disposition name")
