"""The Ledger's batching, backpressure, retries and final flush, on a `Clock`."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txgateway.store import UsageRecord, open_store
from txgateway.store.ledger import Ledger


class DatabaseDown(Exception):
    pass


class ScriptedStore:
    """The ledger's side of `IStore`: each write waits until the test answers it."""

    def __init__(self) -> None:
        self.writes: list[tuple[list[UsageRecord], Deferred[None]]] = []
        self.stored: list[UsageRecord] = []

    def write_usage(self, records: list[UsageRecord]) -> Deferred[None]:
        answer: Deferred[None] = Deferred()
        self.writes.append((list(records), answer))
        return answer

    def succeed(self) -> list[UsageRecord]:
        records, answer = self.writes.pop(0)
        self.stored.extend(records)
        answer.callback(None)
        return records

    def fail(self) -> None:
        _, answer = self.writes.pop(0)
        answer.errback(DatabaseDown())


def record(number: int) -> UsageRecord:
    return UsageRecord(
        request_id=f"r{number}", time=1000.0 + number, kind="request", route="chat",
        key_id=None, model="m", provider="p", upstream_model="m", status=200, input_tokens=1)


class LedgerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.store = ScriptedStore()

    def ledger(self, **options: Any) -> Ledger:
        return Ledger(self.store, self.clock, **options)

    def test_flushes_in_batches_each_interval(self) -> None:
        ledger = self.ledger(flush_interval=0.25, max_batch=3)
        for number in range(7):
            ledger.append(record(number))
        self.clock.advance(0.2)
        self.assertEqual(self.store.writes, [])
        self.clock.advance(0.05)
        self.assertEqual([r.request_id for r in self.store.succeed()], ["r0", "r1", "r2"])
        self.assertEqual(ledger.pending, 4)
        self.assertEqual(len(self.store.succeed()), 3)
        self.assertEqual(len(self.store.succeed()), 1)
        self.assertEqual((ledger.pending, self.store.writes), (0, []))
        self.clock.advance(1.0)  # nothing to write: no empty batches
        self.assertEqual(self.store.writes, [])

    def test_records_appended_during_a_write_wait_for_it(self) -> None:
        ledger = self.ledger(flush_interval=0.25)
        ledger.append(record(1))
        self.clock.advance(0.25)
        ledger.append(record(2))
        self.clock.advance(0.25)  # the first write is still in flight: no second one yet
        self.assertEqual(len(self.store.writes), 1)
        self.assertEqual(ledger.pending, 2)
        self.store.succeed()
        self.assertEqual([r.request_id for r in self.store.succeed()], ["r2"])

    def test_room_applies_backpressure(self) -> None:
        ledger = self.ledger(max_pending=2, flush_interval=0.25)
        self.assertEqual(self.successResultOf(ledger.room()), None)
        ledger.append(record(1))
        ledger.append(record(2))
        waiting = ledger.room()
        self.assertNoResult(waiting)
        self.clock.advance(0.25)
        self.assertNoResult(waiting)  # the batch in flight still counts
        self.store.succeed()
        self.assertEqual(self.successResultOf(waiting), None)
        self.assertEqual(ledger.pending, 0)

    def test_retries_with_backoff_and_logs_once(self) -> None:
        ledger = self.ledger(flush_interval=0.25, max_backoff=1.0)
        ledger.append(record(1))
        self.clock.advance(0.25)
        self.store.fail()
        self.assertEqual(ledger.pending, 1)
        ledger.append(record(2))
        self.clock.advance(0.25)  # backing off for 0.5 s
        self.assertEqual(self.store.writes, [])
        self.clock.advance(0.25)
        self.store.fail()
        for _ in range(4):  # backoff 1.0 s, capped
            self.clock.advance(0.25)
        self.assertEqual(self.store.writes[0][0], [record(1), record(2)])
        self.store.fail()
        self.assertEqual(len(self.flushLoggedErrors(DatabaseDown)), 1)
        for _ in range(4):
            self.clock.advance(0.25)
        self.store.succeed()
        self.assertEqual((ledger.pending, self.store.stored), (0, [record(1), record(2)]))
        ledger.append(record(3))
        self.clock.advance(0.25)  # recovered: back to the plain interval
        self.assertEqual(self.store.succeed(), [record(3)])

    def test_close_flushes_everything(self) -> None:
        ledger = self.ledger(max_batch=1000)
        for number in range(2500):
            ledger.append(record(number))
        closed = ledger.close()
        for size in (1000, 1000, 500):
            self.assertNoResult(closed)
            self.assertEqual(len(self.store.succeed()), size)
        self.successResultOf(closed)
        self.assertEqual(len({r.request_id for r in self.store.stored}), 2500)
        self.clock.advance(10)  # the loop is stopped
        self.assertEqual(self.store.writes, [])

    def test_close_waits_for_a_write_in_flight(self) -> None:
        ledger = self.ledger(flush_interval=0.25)
        ledger.append(record(1))
        self.clock.advance(0.25)
        ledger.append(record(2))
        closed = ledger.close()
        self.assertEqual(len(self.store.writes), 1)
        self.store.succeed()
        self.assertEqual(self.store.succeed(), [record(2)])
        self.successResultOf(closed)

    def test_close_retries_until_its_timeout(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        ledger = self.ledger(flush_interval=0.25, max_backoff=1.0, max_pending=1)
        ledger.append(record(1))
        waiting = ledger.room()
        self.assertNoResult(waiting)
        closed = ledger.close(timeout=2.0)
        self.store.fail()
        self.clock.advance(0.5)
        self.store.fail()
        self.clock.advance(1.0)
        self.store.fail()
        self.clock.advance(0.5)  # the deadline: one last attempt
        self.store.fail()
        self.successResultOf(closed)
        self.assertEqual((ledger.pending, self.store.writes), (1, []))
        self.assertEqual(len(self.flushLoggedErrors(DatabaseDown)), 1)
        self.successResultOf(waiting)  # released: the gateway is stopping
        self.assertEqual([e["count"] for e in events if "unwritten" in e["log_format"]], [1])

    def test_close_succeeds_once_the_database_returns(self) -> None:
        ledger = self.ledger(flush_interval=0.25, max_backoff=1.0)
        ledger.append(record(1))
        closed = ledger.close(timeout=30.0)
        self.store.fail()
        self.clock.advance(0.5)
        self.store.succeed()
        self.successResultOf(closed)
        self.assertEqual(self.store.stored, [record(1)])
        self.flushLoggedErrors(DatabaseDown)


class LedgerOnSQLiteTests(TestCase):
    """The ledger and a real store together."""

    @inlineCallbacks
    def test_records_reach_the_database(self) -> Any:
        directory = self.mktemp()
        os.makedirs(directory)
        store = open_store(f"sqlite:{directory}/ledger.db", reactor)
        yield store.start()
        self.addCleanup(store.close)
        ledger = Ledger(store, reactor, flush_interval=0.01, max_batch=40)
        for number in range(100):
            yield ledger.room()
            ledger.append(record(number))
        ledger.append(record(0))  # a duplicate request id is stored once
        yield ledger.close()
        [row] = yield store.usage_report("model")
        self.assertEqual((row["requests"], row["input_tokens"], ledger.pending), (100, 100, 0))
