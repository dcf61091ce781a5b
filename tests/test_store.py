"""
The store, against both backends: SQLite in a temporary directory and the real PostgreSQL
(``TXGATEWAY_TEST_POSTGRES``, by default the CI's server), each test in a fresh schema.  When
PostgreSQL cannot be reached its tests fail: they are never skipped.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from typing import Any
from urllib.parse import quote

import attrs
import psycopg
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from txgateway.auth import ANONYMOUS, KeyAuthenticator
from txgateway.store import IStore, KeyRecord, UsageRecord, hash_key, open_store
from txgateway.store.migrations import LATEST
from txgateway.store.postgres import PostgresStore
from txgateway.store.sqlite import SQLiteStore, while_locked

POSTGRES_URL = os.environ.get(
    "TXGATEWAY_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")

DAY = 86400.0
#: 2026-11-23T00:00:00Z
MIDNIGHT = 1795392000.0


def usage(request_id: str, time: float, **fields: Any) -> UsageRecord:
    values: dict[str, Any] = {
        "kind": "request", "route": "chat", "key_id": "key_a", "model": "gpt-4o",
        "provider": "openai", "upstream_model": "gpt-4o-2024", "status": 200}
    values.update(fields)
    return UsageRecord(request_id=request_id, time=time, **values)


class StoreContract:
    """What every `IStore` backend must do; mixed into one TestCase per backend."""

    def url(self) -> str:
        raise NotImplementedError

    @inlineCallbacks
    def started(self) -> Any:
        store = open_store(self.url(), reactor)
        yield store.start()
        self.addCleanup(store.close)
        return store

    def versions(self, store: Any) -> Any:
        def select(cursor: Any) -> list[int]:
            cursor.execute("SELECT version FROM schema_version ORDER BY version")
            return [row[0] for row in cursor.fetchall()]

        return store._transact(select)

    @inlineCallbacks
    def test_migrations_run_once(self) -> Any:
        """A second start against a migrated database applies nothing again."""
        first = yield self.started()
        verifyObject(IStore, first)
        second = yield self.started()
        self.assertEqual((yield self.versions(second)), list(range(1, LATEST + 1)))
        self.assertTrue((yield first.check()))

    @inlineCallbacks
    def test_concurrent_migrations(self) -> Any:
        """Two processes' stores migrating the same fresh database at once both succeed."""
        stores = [open_store(self.url(), reactor) for _ in range(2)]
        for store in stores:
            self.addCleanup(store.close)
        yield gatherResults([store.start() for store in stores], consumeErrors=True)
        self.assertEqual((yield self.versions(stores[0])), list(range(1, LATEST + 1)))

    @inlineCallbacks
    def test_an_open_gateway_closes_when_another_process_makes_a_key(self) -> Any:
        """
        A gateway that started with no keys asks the store again within ``cache_seconds``:
        the first key another gateway process creates closes it here too.
        """
        here, there = yield gatherResults([self.started(), self.started()])
        now = [1000.0]
        authenticator = KeyAuthenticator(lambda: now[0], here, [], cache_seconds=10)
        yield ensureDeferred(authenticator.start())
        self.assertIs((yield authenticator.authenticate(None)), ANONYMOUS)
        secret, record = KeyRecord.new_key("made-elsewhere")
        yield there.put_key(record)
        now[0] += 9
        self.assertIs((yield authenticator.authenticate(None)), ANONYMOUS)
        now[0] += 2
        self.assertIsNone((yield authenticator.authenticate(None)))
        self.assertFalse(authenticator.open)
        self.assertEqual((yield authenticator.authenticate(secret)).key_id, record.id)

    @inlineCallbacks
    def test_close_twice(self) -> Any:
        store = open_store(self.url(), reactor)
        yield store.close()
        yield store.start()
        yield store.close()
        yield store.close()

    @inlineCallbacks
    def test_write_usage_is_idempotent(self) -> Any:
        store = yield self.started()
        yield store.write_usage([usage("r1", MIDNIGHT, input_tokens=5),
                                 usage("r2", MIDNIGHT, input_tokens=7)])
        yield store.write_usage([usage("r2", MIDNIGHT, input_tokens=100),
                                 usage("r3", MIDNIGHT, input_tokens=1)])
        [row] = yield store.usage_report("key")
        self.assertEqual((row["requests"], row["input_tokens"]), (3, 13))

    @inlineCallbacks
    def test_usage_report_sums_every_column(self) -> Any:
        store = yield self.started()
        yield store.write_usage([
            usage("r1", MIDNIGHT, input_tokens=10, output_tokens=20, cached_input_tokens=3,
                  cache_creation_tokens=4, reasoning_tokens=5, input_text_tokens=6,
                  input_audio_tokens=7, output_text_tokens=8, output_audio_tokens=9,
                  images=2, audio_seconds=1.5, search_units=3,
                  cost_usd=0.25, estimated=True, ttft_ms=12.5, duration_ms=40.0),
            usage("r2", MIDNIGHT + 1, input_tokens=1, output_tokens=2, cost_usd=0.5,
                  status=429),
        ])
        self.assertEqual((yield store.usage_report("model")), [{
            "model": "gpt-4o", "requests": 2, "input_tokens": 11, "output_tokens": 22,
            "cached_input_tokens": 3, "cache_creation_tokens": 4, "reasoning_tokens": 5,
            "input_text_tokens": 6, "input_audio_tokens": 7, "output_text_tokens": 8,
            "output_audio_tokens": 9, "images": 2, "audio_seconds": 1.5, "search_units": 3,
            "cost_usd": 0.75, "errors": 1,
        }])

    @inlineCallbacks
    def test_usage_report_groupings(self) -> Any:
        store = yield self.started()
        yield store.write_usage([
            usage("r1", MIDNIGHT, key_id="key_b", model="m2", provider="p1", input_tokens=1),
            usage("r2", MIDNIGHT, key_id=None, model="m1", provider="p2", input_tokens=2),
            usage("r3", MIDNIGHT, key_id="key_a", model="m1", provider="p1", input_tokens=4,
                  status=500),
            usage("r4", MIDNIGHT, key_id="key_b", model="m1", provider="", input_tokens=8),
        ])

        def summary(rows: list[dict[str, Any]], column: str) -> list[tuple[Any, ...]]:
            return [(r[column], r["requests"], r["input_tokens"], r["errors"]) for r in rows]

        self.assertEqual(summary((yield store.usage_report("key")), "key"),
                         [(None, 1, 2, 0), ("key_a", 1, 4, 1), ("key_b", 2, 9, 0)])
        self.assertEqual(summary((yield store.usage_report("model")), "model"),
                         [("m1", 3, 14, 1), ("m2", 1, 1, 0)])
        self.assertEqual(summary((yield store.usage_report("provider")), "provider"),
                         [("", 1, 8, 0), ("p1", 2, 5, 1), ("p2", 1, 2, 0)])

    @inlineCallbacks
    def test_usage_report_buckets(self) -> Any:
        store = yield self.started()
        yield store.write_usage([
            usage("r1", MIDNIGHT + 5, model="b"),
            usage("r2", MIDNIGHT + 3599.9, model="a"),
            usage("r3", MIDNIGHT + 3600, model="a"),
            usage("r4", MIDNIGHT + DAY + 7200.5, model="a"),
        ])
        hourly = yield store.usage_report("model", bucket="hour")
        self.assertEqual([(r["bucket"], r["model"], r["requests"]) for r in hourly], [
            ("2026-11-23T00:00:00Z", "a", 1),
            ("2026-11-23T00:00:00Z", "b", 1),
            ("2026-11-23T01:00:00Z", "a", 1),
            ("2026-11-24T02:00:00Z", "a", 1),
        ])
        daily = yield store.usage_report("model", bucket="day")
        self.assertEqual([(r["bucket"], r["model"], r["requests"]) for r in daily], [
            ("2026-11-23T00:00:00Z", "a", 2),
            ("2026-11-23T00:00:00Z", "b", 1),
            ("2026-11-24T00:00:00Z", "a", 1),
        ])

    @inlineCallbacks
    def test_usage_report_time_filters(self) -> Any:
        """``start`` is inclusive, ``end`` exclusive."""
        store = yield self.started()
        yield store.write_usage([usage(f"r{i}", MIDNIGHT + i * 10) for i in range(5)])

        def count(rows: list[dict[str, Any]]) -> int:
            return sum(r["requests"] for r in rows)

        self.assertEqual(count((yield store.usage_report("key", start=MIDNIGHT + 10))), 4)
        self.assertEqual(count((yield store.usage_report("key", end=MIDNIGHT + 10))), 1)
        self.assertEqual(count((yield store.usage_report(
            "key", start=MIDNIGHT + 10, end=MIDNIGHT + 30, bucket="day"))), 2)
        self.assertEqual((yield store.usage_report("key", start=MIDNIGHT + DAY)), [])

    @inlineCallbacks
    def test_usage_report_rejects_unknown_arguments(self) -> Any:
        store = yield self.started()
        self.assertRaises(ValueError, store.usage_report, "team")
        self.assertRaises(ValueError, store.usage_report, "key", bucket="week")

    @inlineCallbacks
    def test_keys(self) -> Any:
        store = yield self.started()
        secret, key = KeyRecord.new_key(
            name="ci", allowed_models=["gpt-*", "claude-*"], requests_per_minute=60,
            budget_usd=12.5, budget_period="day", metadata={"team": "search"},
            expires_at=MIDNIGHT + DAY, created_at=MIDNIGHT)
        _, other = KeyRecord.new_key(name="other", created_at=MIDNIGHT - 1)
        yield store.put_key(key)
        yield store.put_key(other)
        self.assertEqual((yield store.get_key(key.id)), key)
        self.assertEqual((yield store.key_by_hash(hash_key(secret))), key)
        self.assertIsNone((yield store.key_by_hash(hash_key(secret + "x"))))
        self.assertIsNone((yield store.get_key("key_missing")))
        self.assertEqual((yield store.list_keys()), [other, key])

        yield store.put_key(attrs.evolve(key, revoked_at=MIDNIGHT + 60))
        self.assertEqual((yield store.get_key(key.id)).revoked_at, MIDNIGHT + 60)
        self.assertEqual(len((yield store.list_keys())), 2)

    @inlineCallbacks
    def test_objects(self) -> Any:
        store = yield self.started()
        document = {"id": "resp_1", "output": [{"type": "message", "text": "héllo"}], "n": 1.5}
        yield store.put_object("response", "resp_1", "key_a", document, MIDNIGHT)
        self.assertEqual((yield store.get_object("response", "resp_1")), document)
        self.assertIsNone((yield store.get_object("conversation", "resp_1")))
        yield store.put_object("response", "resp_1", "key_a", {"id": "resp_1", "v": 2}, MIDNIGHT)
        self.assertEqual((yield store.get_object("response", "resp_1")), {"id": "resp_1", "v": 2})
        self.assertTrue((yield store.delete_object("response", "resp_1")))
        self.assertFalse((yield store.delete_object("response", "resp_1")))
        self.assertIsNone((yield store.get_object("response", "resp_1")))

    @inlineCallbacks
    def test_list_objects_pages(self) -> Any:
        store = yield self.started()
        # Two share a created_at: the id breaks the tie.
        times = {"o1": 1.0, "o2": 2.0, "o3": 2.0, "o4": 3.0, "o5": 4.0}
        for object_id, created in times.items():
            owner = "key_b" if object_id == "o4" else "key_a"
            yield store.put_object("file", object_id, owner, {"id": object_id}, created)
        yield store.put_object("batch", "b1", "key_a", {"id": "b1"}, 2.5)

        @inlineCallbacks
        def ids(**arguments: Any) -> Any:
            arguments = {"owner": None, "after": None, "limit": 10, **arguments}
            return [d["id"] for d in (yield store.list_objects("file", **arguments))]

        self.assertEqual((yield ids()), ["o5", "o4", "o3", "o2", "o1"])
        self.assertEqual((yield ids(order="asc")), ["o1", "o2", "o3", "o4", "o5"])
        self.assertEqual((yield ids(limit=2)), ["o5", "o4"])
        self.assertEqual((yield ids(limit=2, after="o4")), ["o3", "o2"])
        self.assertEqual((yield ids(after="o3")), ["o2", "o1"])
        self.assertEqual((yield ids(after="o2", order="asc")), ["o3", "o4", "o5"])
        self.assertEqual((yield ids(owner="key_a")), ["o5", "o3", "o2", "o1"])
        self.assertEqual((yield ids(owner="key_a", after="o5", limit=1)), ["o3"])
        self.assertEqual((yield ids(after="missing")), [])
        self.assertEqual((yield ids(owner="nobody")), [])
        self.assertRaises(ValueError, store.list_objects, "file", None, None, 10, "up")


class SQLiteStoreTests(StoreContract, TestCase):
    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "gateway.db")

    def url(self) -> str:
        return f"sqlite:{self.path}"

    @inlineCallbacks
    def test_wal_mode(self) -> Any:
        store = yield self.started()

        def pragmas(cursor: Any) -> tuple[Any, Any]:
            cursor.execute("PRAGMA journal_mode")
            mode = cursor.fetchone()[0]
            cursor.execute("PRAGMA synchronous")
            return mode, cursor.fetchone()[0]

        self.assertEqual((yield store._transact(pragmas)), ("wal", 1))

    @inlineCallbacks
    def test_start_fails_cleanly(self) -> Any:
        store = open_store(f"sqlite:{self.path}/no/such/directory.db", reactor)
        yield self.assertFailure(store.start(), sqlite3.OperationalError)
        yield store.close()

    @inlineCallbacks
    def test_in_memory(self) -> Any:
        store = open_store("sqlite::memory:", reactor)
        yield store.start()
        self.addCleanup(store.close)
        yield store.write_usage([usage("r1", MIDNIGHT)])
        self.assertEqual(len((yield store.usage_report("model"))), 1)


class PostgresStoreTests(StoreContract, TestCase):
    """Each test in a schema of its own, dropped afterwards."""

    def setUp(self) -> None:
        self.schema = "t_" + secrets.token_hex(6)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {self.schema}")
        self.addCleanup(self._drop_schema)

    def _drop_schema(self) -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {self.schema} CASCADE")

    def url(self) -> str:
        options = quote(f"-csearch_path={self.schema}", safe="")
        return f"{POSTGRES_URL}?options={options}&application_name={self.schema}"

    @inlineCallbacks
    def test_reconnects_after_connections_die(self) -> Any:
        """Connections killed as by a server restart are replaced, without a failed call."""
        store = yield self.started()
        yield store.put_key(KeyRecord(id="key_1", hash="h1"))
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s", (self.schema,)).fetchone()[0]
        self.assertGreaterEqual(killed, 1)
        self.assertTrue((yield store.check()))
        self.assertEqual((yield store.get_key("key_1")).hash, "h1")


class OpenStoreTests(SynchronousTestCase):
    def test_schemes(self) -> None:
        store = open_store("sqlite:relative/gateway.db", reactor)
        self.assertIsInstance(store, SQLiteStore)
        self.assertEqual(store.path, os.path.abspath("relative/gateway.db"))
        self.assertEqual(open_store("sqlite::memory:", reactor).path, ":memory:")
        self.assertIsInstance(open_store(POSTGRES_URL, reactor), PostgresStore)

    def test_unknown_scheme(self) -> None:
        error = self.assertRaises(ValueError, open_store, "mysql://u:secret@h/db", reactor)
        self.assertIn("'mysql'", str(error))
        self.assertNotIn("secret", str(error))
        self.assertRaises(ValueError, open_store, "sqlite:", reactor)


class KeyRecordTests(SynchronousTestCase):
    def test_new_key(self) -> None:
        secret, key = KeyRecord.new_key(name="ci", tokens_per_minute=1000)
        self.assertRegex(secret, r"^sk-gw-[A-Za-z0-9_-]{40}$")
        self.assertEqual(key.hash, hash_key(secret))
        self.assertEqual(len(key.hash), 64)
        self.assertEqual(key.prefix, secret[:8])
        self.assertTrue(key.id.startswith("key_"))
        self.assertNotEqual(KeyRecord.new_key()[0], secret)
        self.assertGreater(key.created_at, 0)

    def test_to_json_hides_the_hash(self) -> None:
        _, key = KeyRecord.new_key(name="ci", allowed_models=("a*",), metadata={"k": "v"})
        shown = key.to_json()
        self.assertNotIn("hash", shown)
        self.assertNotIn(key.hash, shown.values())
        self.assertEqual((shown["id"], shown["allowed_models"], shown["metadata"]),
                         (key.id, ["a*"], {"k": "v"}))


class WhileLockedTests(SynchronousTestCase):
    """`while_locked`: what SQLite refuses at once as locked is tried again, for a while."""

    def test_a_statement_locked_at_first_runs_once_the_lock_is_gone(self) -> None:
        answers: list[Any] = [sqlite3.OperationalError("database is locked")] * 3 + ["wal"]
        slept: list[float] = []

        def statement() -> Any:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

        self.assertEqual(while_locked(statement, sleep=slept.append), "wal")
        self.assertEqual(len(slept), 3)

    def test_other_errors_and_a_lock_past_the_timeout_are_raised(self) -> None:
        def broken() -> None:
            raise sqlite3.OperationalError("no such table: usage")

        self.assertRaises(sqlite3.OperationalError, while_locked, broken, sleep=lambda _: None)

        def locked() -> None:
            raise sqlite3.OperationalError("database is locked")

        self.assertRaises(sqlite3.OperationalError, while_locked, locked, timeout=0.05)
