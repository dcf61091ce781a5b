"""
The embedded backend: one SQLite file (WAL, ``synchronous=NORMAL``), one connection used by
one dedicated thread, so the reactor never waits on the disk and statements never interleave.

Transactions are explicit (the connection is in autocommit mode): writes take ``BEGIN
IMMEDIATE``, so two processes sharing the file queue on SQLite's lock (with a busy timeout)
instead of failing on a read lock that cannot be upgraded.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from txgateway.store import IStore
from txgateway.store.sql import Dialect, SQLStore

SQLITE = Dialect(
    placeholder="?",
    json_type="TEXT",
    bucket="CAST(started_at / {seconds} AS INTEGER) * {seconds}",
)

#: How long a write waits for another process holding the file's write lock.
BUSY_TIMEOUT = 10.0


def while_locked(statement: Callable[[], Any], timeout: float = BUSY_TIMEOUT,
                 sleep: Callable[[float], None] = time.sleep) -> Any:
    """
    Run ``statement``, again while SQLite says the file is locked, for up to ``timeout``:
    two processes opening a fresh file at once, one may be told so at once (the other is
    recovering its write-ahead log), without SQLite's own busy timeout being applied.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
        sleep(0.01)


@implementer(IStore)
class SQLiteStore(SQLStore):
    """`IStore` in the SQLite file at ``path`` (or ``:memory:``)."""

    dialect = SQLITE

    def __init__(self, path: str, reactor: Any) -> None:
        super().__init__(reactor, ThreadPool(1, 1, name="txgateway-sqlite"))
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> None:
        connection = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        while_locked(lambda: connection.execute("PRAGMA journal_mode=WAL"))
        connection.execute("PRAGMA synchronous=NORMAL")
        self._connection = connection

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _run(self, work: Callable[..., Any], args: tuple[Any, ...], write: bool) -> Any:
        connection = self._connection
        if connection is None:
            raise RuntimeError("the SQLite store is not started or already closed")
        cursor = connection.cursor()
        cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            result = work(cursor, *args)
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        finally:
            cursor.close()
        connection.execute("COMMIT")
        return result
