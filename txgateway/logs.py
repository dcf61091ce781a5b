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
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        record = {"time": datetime.fromtimestamp(event["log_time"], UTC).isoformat()}
        for key, value in event.items():
            if not key.startswith("log_"):
                record[key] = value
        self._stream.write(orjson.dumps(record, default=str) + b"\n")
        self._stream.flush()


def access_logger(target: str) -> tuple[Logger, IO[bytes] | None]:
    """
    The access ``Logger`` for a config's ``access_log`` target, and the file it opened (to
    close at stop).  The logger has its own observer, so access records never pass through
    the process-wide log publisher and its text formatting.
    """
    if target == "off":
        return Logger(namespace="txgateway.access", observer=lambda event: None), None
    if target == "-":
        # sys.__stdout__: twistd redirects sys.stdout into the log system itself.
        return _logger(JSONLinesObserver(sys.__stdout__.buffer)), None
    stream = open(target, "ab")  # noqa: SIM115 (closed by the service at stop)
    return _logger(JSONLinesObserver(stream)), stream


def _logger(observer: ILogObserver) -> Logger:
    return Logger(namespace="txgateway.access", observer=observer)


def write_access(log: Logger, **fields: Any) -> None:
    """Emit one access record: structured fields only, no human format string."""
    log.emit(LogLevel.info, None, **fields)
