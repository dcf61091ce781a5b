"""Translations between API dialects, through one internal shape: OpenAI chat completions."""

from typing import Any

import orjson

from txgateway.streams import EventSplitter, data_of, events
from txgateway.upstream import UpstreamError
from txgateway.usage import Usage


class Untranslatable(UpstreamError):
    """
    A request asks for what the provider cannot be given (an image by URL to Bedrock, token
    arrays to Gemini's embeddings): the caller's mistake, a 400, before any call is made.
    """

    status = 400
    code = "unsupported_by_provider"


def data_url(url: str) -> tuple[str, str] | None:
    """``(media type, base64 data)`` of a ``data:...;base64,`` URL; None for any other URL."""
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return media_type, data
    return None


def arguments_object(arguments: Any) -> dict[str, Any]:
    """
    A tool call's JSON arguments as an object, which the other dialects require; ``{}`` for
    none, malformed JSON or a non-object.
    """
    if not arguments:
        return {}
    try:
        value = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


class FromChatChunks:
    """
    The base of stream translators that read an OpenAI chat chunk stream and write another
    dialect's events: it splits the SSE and hands each chunk to `_chunk`, an error object to
    `_error`, and ``[DONE]`` (or `finish`, for a stream cut short) to `_end`; each returns
    the events to write.  ``usage``, ``error`` and ``chunks`` are read as it goes.
    """

    def __init__(self) -> None:
        self._splitter = EventSplitter()
        self.usage: Usage | None = None
        self.error: tuple[int, str] | None = None
        self.chunks = 0

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in events(self._splitter.feed(data)):
            payload = data_of(event)
            if not payload:
                continue
            if payload == b"[DONE]":
                out += self._end()
                continue
            chunk = orjson.loads(payload)
            if isinstance(chunk.get("error"), dict):
                out += self._error(chunk["error"])
                continue
            out += self._chunk(chunk)
        self.chunks += len(out)
        return b"".join(out)

    def finish(self) -> bytes:
        """A stream that ended without ``[DONE]`` still ends complete."""
        return b"".join(self._end())

    def _chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def _error(self, error: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def _end(self) -> list[bytes]:
        raise NotImplementedError
