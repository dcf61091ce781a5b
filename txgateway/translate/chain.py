"""Two stream translators in a row: a provider's dialect to OpenAI chunks to the caller's."""

from __future__ import annotations

from typing import Any

from txgateway.usage import Usage


class ChainedStream:
    """
    ``first`` turns the upstream's stream into OpenAI chat chunks, ``second`` those into the
    caller's dialect (e.g. a Gemini stream for a Messages caller).  Usage and errors are read
    from ``first``, nearest the upstream; the chunk count from ``second``, what was written.
    """

    def __init__(self, first: Any, second: Any) -> None:
        self._first = first
        self._second = second

    def feed(self, data: bytes) -> bytes:
        return self._second.feed(self._first.feed(data))

    def finish(self) -> bytes:
        return self._second.feed(self._first.finish()) + self._second.finish()

    @property
    def usage(self) -> Usage | None:
        return self._first.usage or self._second.usage

    @property
    def error(self) -> tuple[int, str] | None:
        return self._first.error or self._second.error

    @property
    def chunks(self) -> int:
        return self._second.chunks

    @property
    def complete(self) -> bool:
        return bool(self._second.complete)
