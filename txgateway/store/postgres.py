"""
The shared backend: PostgreSQL through psycopg 3, for many gateway processes and machines.

Connections come from psycopg's own pool, used from a Twisted thread pool of the same size.
Chosen over `twisted.enterprise.adbapi` because the pool checks a connection before lending
it (``check_connection``) and replaces broken ones in the background: after the server
restarts, the next call gets a fresh connection instead of failing once on a dead one, as
adbapi's ``cp_reconnect`` does.  The check costs one empty round trip per transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg_pool import ConnectionPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from txgateway.store import IStore
from txgateway.store.sql import Dialect, SQLStore

POSTGRES = Dialect(
    placeholder="%s",
    json_type="JSONB",
    bucket="CAST(floor(started_at / {seconds}) AS BIGINT) * {seconds}",
)

#: Serialises migrations of one schema across every process sharing the database.
MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(1954047863, hashtext(current_schema()))"


@implementer(IStore)
class PostgresStore(SQLStore):
    """
    `IStore` in the PostgreSQL database at ``url`` (a libpq URL; its ``options`` parameter
    may set the ``search_path``).  ``timeout`` bounds the wait for a connection.
    """

    dialect = POSTGRES

    def __init__(
        self, url: str, reactor: Any, pool_size: int = 4, timeout: float = 5.0
    ) -> None:
        super().__init__(reactor, ThreadPool(1, pool_size, name="txgateway-postgres"))
        self._timeout = timeout
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, open=False, timeout=timeout,
            check=ConnectionPool.check_connection, name="txgateway-store")

    def _connect(self) -> None:
        self._pool.open(wait=True, timeout=self._timeout)

    def _disconnect(self) -> None:
        self._pool.close()

    def _migrate(self, cursor: Any) -> list[int]:
        cursor.execute(MIGRATION_LOCK)
        return super()._migrate(cursor)

    def _run(self, work: Callable[..., Any], args: tuple[Any, ...], write: bool) -> Any:
        # The pool's context commits when the block ends normally, rolls back otherwise.
        with self._pool.connection() as connection, connection.cursor() as cursor:
            return work(cursor, *args)
