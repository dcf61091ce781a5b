"""
The queries both backends share, written once in portable SQL.

A backend supplies a `Dialect` (the few places SQLite and PostgreSQL differ), a thread pool,
and what runs in it: `_connect`, `_disconnect`, and `_run`, which runs ``work(cursor, *args)``
in one transaction.  Queries are written with ``?`` placeholders and translated once per
dialect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import orjson
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from txgateway.store import KeyRecord, UsageRecord
from txgateway.store.migrations import migrate

_GROUP_COLUMNS = {"key": "key_id", "model": "model", "provider": "provider"}
_BUCKET_SECONDS = {"hour": 3600, "day": 86400}
_TOKEN_COLUMNS = (
    "input_tokens", "output_tokens", "cached_input_tokens", "cache_creation_tokens",
    "reasoning_tokens", "input_text_tokens", "input_audio_tokens", "output_text_tokens",
    "output_audio_tokens",
)
#: The other units calls are priced by, summed alike (``audio_seconds`` is fractional).
_UNIT_COLUMNS = ("images", "audio_seconds", "search_units")
_USAGE_COLUMNS = (
    "request_id", "started_at", "kind", "route", "key_id", "model", "provider",
    "upstream_model", "status", *_TOKEN_COLUMNS, *_UNIT_COLUMNS, "estimated", "cost_usd",
    "duration_ms", "ttft_ms",
)
_KEY_COLUMNS = (
    "id", "hash", "name", "prefix", "allowed_models", "requests_per_minute",
    "tokens_per_minute", "budget_usd", "budget_period", "metadata", "created_at", "revoked_at",
    "expires_at",
)
_KEY_SELECT = f"SELECT {', '.join(_KEY_COLUMNS)} FROM gateway_keys"


def _insert(table: str, columns: Sequence[str], conflict: str) -> str:
    values = ", ".join("?" for _ in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({values}) {conflict}"


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return _insert(table, columns, f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}")


_INSERT_USAGE = _insert("usage_ledger", _USAGE_COLUMNS, "ON CONFLICT (request_id) DO NOTHING")
_UPSERT_KEY = _upsert("gateway_keys", _KEY_COLUMNS, ("id",))
_UPSERT_OBJECT = _upsert(
    "stored_objects", ("kind", "id", "owner", "created_at", "data"), ("kind", "id"))


@attrs.frozen
class Dialect:
    """What differs between the SQL of two databases."""

    #: The driver's parameter marker.
    placeholder: str
    #: The column type of JSON documents.
    json_type: str
    #: An integer expression of ``started_at`` truncated down to a multiple of ``{seconds}``.
    bucket: str

    def sql(self, text: str) -> str:
        """``text`` with its ``?`` markers in this driver's style."""
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)


def _usage_row(record: UsageRecord) -> tuple[Any, ...]:
    return (
        record.request_id, record.time, record.kind, record.route, record.key_id, record.model,
        record.provider, record.upstream_model, record.status, record.input_tokens,
        record.output_tokens, record.cached_input_tokens, record.cache_creation_tokens,
        record.reasoning_tokens, record.input_text_tokens, record.input_audio_tokens,
        record.output_text_tokens, record.output_audio_tokens, record.images,
        record.audio_seconds, record.search_units, record.estimated, record.cost_usd,
        record.duration_ms, record.ttft_ms,
    )


def _key_row(record: KeyRecord) -> tuple[Any, ...]:
    return (
        record.id, record.hash, record.name, record.prefix,
        orjson.dumps(list(record.allowed_models)).decode(), record.requests_per_minute,
        record.tokens_per_minute, record.budget_usd, record.budget_period,
        orjson.dumps(dict(record.metadata)).decode(), record.created_at, record.revoked_at,
        record.expires_at,
    )


def _key_record(row: Sequence[Any]) -> KeyRecord:
    (id_, hash_, name, prefix, allowed, rpm, tpm, budget, period, metadata, created, revoked,
     expires) = row
    return KeyRecord(
        id=id_, hash=hash_, name=name, prefix=prefix, allowed_models=orjson.loads(allowed),
        requests_per_minute=rpm, tokens_per_minute=tpm, budget_usd=budget,
        budget_period=period, metadata=orjson.loads(metadata), created_at=created,
        revoked_at=revoked, expires_at=expires,
    )


def _bucket_label(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SQLStore:
    """
    The `IStore` methods, over a backend's connections used from its own threads (stopped at
    reactor shutdown if the store was never closed), so the reactor never waits on the database.
    """

    dialect: Dialect

    def __init__(self, reactor: Any, threads: ThreadPool) -> None:
        self._reactor = reactor
        self._threads = threads
        self._shutdown_trigger: Any = None

    def start(self) -> Deferred[None]:
        self._threads.start()
        self._shutdown_trigger = self._reactor.addSystemEventTrigger(
            "during", "shutdown", self._stop_threads)
        started = self._in_thread(self._connect)
        started.addCallback(lambda _: self._transact(self._migrate, write=True))
        started.addCallbacks(lambda _: None, lambda failure: self.close().addCallback(
            lambda _: failure))
        return started

    def close(self) -> Deferred[None]:
        if not self._threads.started:  # never started, or closed already
            return succeed(None)
        return self._in_thread(self._disconnect).addBoth(self._finish_close)

    def _finish_close(self, result: Any) -> Any:
        if self._shutdown_trigger is not None:
            self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        self._stop_threads()
        return result

    def _stop_threads(self) -> None:
        if self._threads.started:
            self._threads.stop()

    def _in_thread(self, work: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._threads, work, *args)

    def _transact(
        self, work: Callable[..., Any], *args: Any, write: bool = False
    ) -> Deferred[Any]:
        """Fires with ``work(cursor, *args)``, run in one transaction in a store thread."""
        return self._in_thread(self._run, work, args, write)

    def _migrate(self, cursor: Any) -> list[int]:
        return migrate(cursor, self.dialect.placeholder, self.dialect.json_type)

    def _connect(self) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _run(self, work: Callable[..., Any], args: tuple[Any, ...], write: bool) -> Any:
        raise NotImplementedError

    def _prepare(self, text: str) -> str:
        return self.dialect.sql(text)

    def check(self) -> Deferred[bool]:
        def probe(cursor: Any) -> bool:
            cursor.execute("SELECT 1")
            return cursor.fetchone()[0] == 1

        return self._transact(probe)

    def write_usage(self, records: Sequence[UsageRecord]) -> Deferred[None]:
        rows = [_usage_row(record) for record in records]
        sql = self._prepare(_INSERT_USAGE)

        def insert(cursor: Any) -> None:
            cursor.executemany(sql, rows)

        return self._transact(insert, write=True)

    def usage_report(
        self,
        group_by: str,
        start: float | None = None,
        end: float | None = None,
        bucket: str | None = None,
    ) -> Deferred[list[dict[str, Any]]]:
        if group_by not in _GROUP_COLUMNS:
            raise ValueError(f"group_by must be one of {sorted(_GROUP_COLUMNS)}, not {group_by!r}")
        if bucket is not None and bucket not in _BUCKET_SECONDS:
            raise ValueError(f"bucket must be None, 'hour' or 'day', not {bucket!r}")
        group = _GROUP_COLUMNS[group_by]
        keys = [group]
        if bucket is not None:
            keys.append(self.dialect.bucket.format(seconds=_BUCKET_SECONDS[bucket]))
        sums = ", ".join([
            *(f"CAST(SUM({c}) AS BIGINT)" for c in (*_TOKEN_COLUMNS, "images", "search_units")),
            "SUM(audio_seconds)"])
        conditions, params = [], []
        if start is not None:
            conditions.append("started_at >= ?")
            params.append(start)
        if end is not None:
            conditions.append("started_at < ?")
            params.append(end)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = self._prepare(
            f"SELECT {', '.join(keys)}, COUNT(*), {sums}, SUM(cost_usd), "
            f"CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT) "
            f"FROM usage_ledger {where} GROUP BY {', '.join(keys)}")

        def report(cursor: Any) -> list[dict[str, Any]]:
            cursor.execute(sql, params)
            return cursor.fetchall()

        def shape(rows: list[Sequence[Any]]) -> list[dict[str, Any]]:
            result = []
            for row in rows:
                entry: dict[str, Any] = {group_by: row[0]}
                values = iter(row[1:])
                if bucket is not None:
                    entry["bucket"] = _bucket_label(int(next(values)))
                entry["requests"] = next(values)
                for column in (*_TOKEN_COLUMNS, "images", "search_units", "audio_seconds"):
                    entry[column] = next(values)
                entry["cost_usd"] = next(values)
                entry["errors"] = next(values)
                result.append(entry)
            result.sort(key=lambda e: (e.get("bucket", ""), e[group_by] is not None,
                                       e[group_by] or ""))
            return result

        return self._transact(report).addCallback(shape)

    def put_key(self, record: KeyRecord) -> Deferred[None]:
        sql, row = self._prepare(_UPSERT_KEY), _key_row(record)

        def upsert(cursor: Any) -> None:
            cursor.execute(sql, row)

        return self._transact(upsert, write=True)

    def _one_key(self, column: str, value: str) -> Deferred[KeyRecord | None]:
        sql = self._prepare(f"{_KEY_SELECT} WHERE {column} = ?")

        def select(cursor: Any) -> KeyRecord | None:
            cursor.execute(sql, (value,))
            row = cursor.fetchone()
            return None if row is None else _key_record(row)

        return self._transact(select)

    def get_key(self, key_id: str) -> Deferred[KeyRecord | None]:
        return self._one_key("id", key_id)

    def key_by_hash(self, hash: str) -> Deferred[KeyRecord | None]:
        return self._one_key("hash", hash)

    def list_keys(self) -> Deferred[list[KeyRecord]]:
        def select(cursor: Any) -> list[KeyRecord]:
            cursor.execute(f"{_KEY_SELECT} ORDER BY created_at, id")
            return [_key_record(row) for row in cursor.fetchall()]

        return self._transact(select)

    def put_object(
        self, kind: str, object_id: str, owner: str | None, data: dict[str, Any],
        created_at: float,
    ) -> Deferred[None]:
        sql = self._prepare(_UPSERT_OBJECT)
        row = (kind, object_id, owner, created_at, orjson.dumps(data).decode())

        def upsert(cursor: Any) -> None:
            cursor.execute(sql, row)

        return self._transact(upsert, write=True)

    def get_object(self, kind: str, object_id: str) -> Deferred[dict[str, Any] | None]:
        sql = self._prepare(
            "SELECT CAST(data AS TEXT) FROM stored_objects WHERE kind = ? AND id = ?")

        def select(cursor: Any) -> dict[str, Any] | None:
            cursor.execute(sql, (kind, object_id))
            row = cursor.fetchone()
            return None if row is None else orjson.loads(row[0])

        return self._transact(select)

    def delete_object(self, kind: str, object_id: str) -> Deferred[bool]:
        sql = self._prepare("DELETE FROM stored_objects WHERE kind = ? AND id = ?")

        def delete(cursor: Any) -> bool:
            cursor.execute(sql, (kind, object_id))
            return cursor.rowcount > 0

        return self._transact(delete, write=True)

    def list_objects(
        self, kind: str, owner: str | None, after: str | None, limit: int, order: str = "desc"
    ) -> Deferred[list[dict[str, Any]]]:
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
        conditions, params = ["kind = ?"], [kind]
        if owner is not None:
            conditions.append("owner = ?")
            params.append(owner)
        if after is not None:
            conditions.append(f"(created_at, id) {'<' if order == 'desc' else '>'} (?, ?)")
        direction = order.upper()
        sql = self._prepare(
            f"SELECT CAST(data AS TEXT) FROM stored_objects WHERE {' AND '.join(conditions)} "
            f"ORDER BY created_at {direction}, id {direction} LIMIT ?")
        anchor_sql = self._prepare(
            "SELECT created_at FROM stored_objects WHERE kind = ? AND id = ?")

        def select(cursor: Any) -> list[dict[str, Any]]:
            arguments = list(params)
            if after is not None:
                cursor.execute(anchor_sql, (kind, after))
                anchor = cursor.fetchone()
                if anchor is None:
                    return []
                arguments += [anchor[0], after]
            cursor.execute(sql, [*arguments, limit])
            return [orjson.loads(row[0]) for row in cursor.fetchall()]

        return self._transact(select)
