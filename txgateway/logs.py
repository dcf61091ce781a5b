"""The access log: one JSON line per request or realtime session."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any, Protocol

import orjson

AccessWriter = Callable[[dict[str, Any]], None]
"""Takes one access record's fields (``AccessLog.write``, or a test's list.append)."""


class Sink(Protocol):
    """Where lines go: a binary file, or stdout's buffer."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


class JSONLinesWriter:
    """
    Writes each record as one JSON line, with an ISO 8601 ``time`` first.

    Records go straight to the stream, not through twisted.logger: building a log event and
    filtering its ``log_*`` bookkeeping back out cost seven times the line itself, on every
    request.  Lines are kept until the service calls `flush` (every second and at stop), then
    written in one piece, so a line costs no system call of its own and workers appending to
    one file never split each other's lines.  (The usage ledger, not this log, is the
    durable record.)  They are also written once ``max_bytes`` of them wait: a second of
    lines at a few thousand requests a second, held and joined, grew the worker's heap by
    10-15 MiB that it never gave back.
    """

    def __init__(self, stream: Sink, clock: Callable[[], float] = time.time,
                 max_bytes: int = 64 * 1024) -> None:
        self._stream = stream
        self._clock = clock
        self._max_bytes = max_bytes
        self._second = -1
        self._second_text = ""
        self._lines: list[bytes] = []
        self._size = 0

    def __call__(self, fields: dict[str, Any]) -> None:
        line = orjson.dumps({"time": self._time(self._clock()), **fields},
                            default=str, option=orjson.OPT_APPEND_NEWLINE)
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self._max_bytes:
            self.flush()

    def _time(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((when - second) * 1e6):06d}Z"

    def flush(self) -> None:
        if self._lines:
            lines, self._lines, self._size = self._lines, [], 0
            self._stream.write(b"".join(lines))
        self._stream.flush()


def _discard(fields: dict[str, Any]) -> None:
    """The writer of ``access_log: off``."""


class AccessLog:
    """Where a config's ``access_log`` goes: "-" (stdout), a file path, or "off"."""

    def __init__(self, target: str) -> None:
        self._file: IO[bytes] | None = None
        self._writer: JSONLinesWriter | None = None
        self.write: AccessWriter = _discard
        if target == "off":
            return
        if target == "-":
            # sys.__stdout__: twistd redirects sys.stdout into the log system itself.
            if sys.__stdout__ is None:
                raise ValueError("the access log goes to stdout, but there is none")
            stream: Sink = sys.__stdout__.buffer
        else:
            stream = self._file = open(target, "ab")  # noqa: SIM115 (closed by close())
        self._writer = self.write = JSONLinesWriter(stream)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
