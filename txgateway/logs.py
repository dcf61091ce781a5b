"""The access log: one JSON line per request, through twisted.logger."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from twisted.logger import ILogObserver, Logger, LogLevel
from zope.interface import implementer


@implementer(ILogObserver)
class JSONLinesObserver:
    """
    Writes each event's own fields (not twisted.logger's ``log_*`` bookkeeping) as one JSON
    line, with an ISO 8601 ``time`` first.

    Lines are buffered; the service calls `flush` every second and at stop, so a line costs
    no system call of its own.  (The usage ledger, not this log, is the durable record.)
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self._second = -1
        self._second_text = ""

    def __call__(self, event: dict[str, Any]) -> None:
        record = {"time": self._time(event["log_time"])}
        for key, value in event.items():
            if not key.startswith("log_"):
                record[key] = value
        self._stream.write(orjson.dumps(record, default=str) + b"\n")

    def _time(self, when: float) -> str:
        second = int(when)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((when - second) * 1e6):06d}Z"

    def flush(self) -> None:
        self._stream.flush()


class AccessLog:
    """
    Where a config's ``access_log`` goes: "-" (stdout), a file path, or "off".

    ``logger`` has its own observer, so access records never pass through the process-wide
    log publisher and its text formatting.
    """

    def __init__(self, target: str) -> None:
        self._file: IO[bytes] | None = None
        self._observer: JSONLinesObserver | None = None
        if target == "off":
            self.logger = Logger(namespace="txgateway.access", observer=lambda event: None)
            return
        if target == "-":
            # sys.__stdout__: twistd redirects sys.stdout into the log system itself.
            stream = sys.__stdout__.buffer
        else:
            stream = self._file = open(target, "ab")  # noqa: SIM115 (closed by close())
        self._observer = JSONLinesObserver(stream)
        self.logger = Logger(namespace="txgateway.access", observer=self._observer)

    def flush(self) -> None:
        if self._observer is not None:
            self._observer.flush()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()


def write_access(log: Logger, **fields: Any) -> None:
    """Emit one access record: structured fields only, no human format string."""
    log.emit(LogLevel.info, None, **fields)
