"""
The upstream fault matrix (issue 16, item 2): every fault an upstream can commit, against every
endpoint family, each cell bounded in time.  Each cell checks what the caller gets, that the
call falls back to the backup target only before the first byte, that every upstream socket is
closed again, and that the ledger holds exactly one row for the call.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from typing import Any

import attrs
import orjson
import pytest
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from tests.fault_upstream import FaultyUpstream
from tests.gateway_harness import CONFIG, GatewayTestCase

FAULTS = ("refused", "reset", "silent", "stall", "cut", "malformed", "status-400",
          "status-503", "drip")

MESSAGES = [{"role": "user", "content": "hi"}]


@attrs.frozen
class Family:
    """One endpoint family: its path, a body for a model, and its error dialect."""

    name: str
    path: str
    body: dict[str, Any]
    stream: bool = False
    anthropic: bool = False

    def request(self, model: str) -> bytes:
        return orjson.dumps({"model": model, **self.body, **({"stream": True}
                                                             if self.stream else {})})


FAMILIES = (
    Family("chat", "/v1/chat/completions", {"messages": MESSAGES}),
    Family("chat-stream", "/v1/chat/completions", {"messages": MESSAGES}, stream=True),
    Family("messages", "/v1/messages", {"max_tokens": 5, "messages": MESSAGES},
           anthropic=True),
    Family("messages-stream", "/v1/messages", {"max_tokens": 5, "messages": MESSAGES},
           stream=True, anthropic=True),
    Family("responses", "/v1/responses", {"input": "hi"}),
    Family("embeddings", "/v1/embeddings", {"input": "hi"}),
)


def _fault_config() -> str:
    def base_url(fault: str) -> str:
        if fault == "refused":
            return "http://127.0.0.1:{closed_port}/v1"
        return f"http://127.0.0.1:{{fault_port}}/{fault}/v1"
    providers = "".join(f"  f-{fault}:\n    plugin: openai\n    base_url: {base_url(fault)}\n"
                        for fault in FAULTS)
    models = "".join(
        f"  - name: fault-{fault}\n    targets:\n"
        f"      - provider: f-{fault}\n"
        f"      - provider: fake\n        model: backup\n        priority: 1\n"
        for fault in FAULTS)
    return (CONFIG.replace("providers:\n", "routing:\n  failures_before_cooldown: 1000000\n"
                           "providers:\n" + providers)
            .replace("models:\n", "models:\n" + models))


FAULT_CONFIG = _fault_config()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class FaultMatrixTests(GatewayTestCase):
    config = FAULT_CONFIG

    async def _start(self) -> None:
        self.faulty = FaultyUpstream()
        self.fault_port = reactor.listenTCP(0, self.faulty, interface="127.0.0.1")
        self.addCleanup(self.fault_port.stopListening)
        self.config = FAULT_CONFIG.replace(
            "{fault_port}", str(self.fault_port.getHost().port))
        await super()._start()

    async def call(self, family: Family, model: str) -> tuple[int, bytes, float]:
        started = reactor.seconds()
        response = await treq.post(
            self.base_url + family.path, family.request(model), pool=self.pool, timeout=10,
            headers={b"content-type": [b"application/json"],
                     b"anthropic-version": [b"2023-06-01"]})
        return response.code, await response.content(), reactor.seconds() - started

    def ledger_rows(self) -> int:
        path = os.path.join(os.path.dirname(self.access_log_path), "store.db")
        with closing(sqlite3.connect(path)) as db:
            return db.execute("SELECT count(*) FROM usage_ledger").fetchone()[0]

    async def check_cell(self, family: Family, fault: str) -> None:
        await self.call(Family("warm", family.path, family.body), "warmup")
        await self.ledger_written()
        rows = self.ledger_rows()
        fds = open_fds()
        self.fake.requests.clear()
        status, body, took = await self.call(family, "fault-" + fault)
        expected = expectation(family, fault)
        cell = (family.name, fault, status, body[:300])
        self.assertLess(took, expected.within, cell)
        self.assertEqual(status, expected.status, cell)
        self.assertEqual(len(self.fake.requests), int(expected.fallback), cell)
        for fragment in expected.says:
            self.assertIn(fragment, body, cell)
        if status >= 400:
            error = orjson.loads(body)
            if family.anthropic:
                self.assertEqual(error["type"], "error", cell)
            self.assertIsInstance(error["error"]["message"], str, cell)
        await self.ledger_written()
        self.assertEqual(self.ledger_rows(), rows + 1, cell)
        for _ in range(40):
            if open_fds() <= fds and not self.faulty.open:
                break
            await deferLater(reactor, 0.05)
        self.assertEqual((open_fds() - fds, self.faulty.open), (0, 0), cell)


    async def test_no_fallback_after_the_caller_left(self) -> None:
        """A caller who leaves while the upstream is silent is not followed by a fallback."""
        call = treq.post(self.base_url + "/v1/chat/completions",
                         FAMILIES[0].request("fault-silent"), pool=self.pool,
                         headers={b"content-type": [b"application/json"]})
        await deferLater(reactor, 0.3)
        call.cancel()
        call.addErrback(lambda _: None)
        await deferLater(reactor, 1.5)  # past the first-byte timeout that would fall back
        self.assertEqual((self.faulty.requests, self.fake.requests), (["silent"], []))
        self.assertEqual(self.faulty.open, 0)
        await self.ledger_written()
        self.assertEqual(self.ledger_rows(), 1)


@attrs.frozen
class Expected:
    status: int
    #: Whether the backup target answered (the faulty one failed before the first byte).
    fallback: bool
    #: Fragments the caller's body must hold.
    says: tuple[bytes, ...] = ()
    #: The bound on the whole call, in seconds.
    within: float = 2.0


#: Faults seen before the first byte reaches the caller, whatever the endpoint.
BEFORE_FIRST_BYTE = {"refused", "reset", "silent", "status-503"}


def expectation(family: Family, fault: str) -> Expected:
    """What the caller must get: the backup's answer, the provider's refusal or a clean error."""
    backup = b'"model":"backup"'
    if fault in BEFORE_FIRST_BYTE:
        return Expected(200, True, (backup,))
    if fault == "status-400":
        return Expected(400, False, (b"provider says no",))
    if fault == "drip":
        return Expected(200, False, (b"hi" if family.stream else b"dripped",))
    if not family.stream:  # stalled, cut or malformed: nothing was sent yet, so fall back
        return Expected(200, True, (backup,)) if fault != "malformed" else Expected(502, False)
    # Headers went to the caller: the stream ends with an error event in its dialect.
    if family.anthropic:
        return Expected(200, False, (b"event: error",))
    if fault == "malformed":
        return Expected(200, False, (b"data: {not json",))  # native streams are relayed as is
    return Expected(200, False, (b'"error"',))


#: Defects found by the matrix, each a strict xfail until its owner fixes it.
DEFECTS: dict[tuple[str, str], str] = {}
#: The drip answers chat completions; the other families do not parse them.
SKIPPED = {("responses", "drip"), ("embeddings", "drip")}


def _cell_test(family: Family, fault: str) -> Any:
    def test(self: FaultMatrixTests) -> Deferred[None]:
        return Deferred.fromCoroutine(self.check_cell(family, fault))
    reason = DEFECTS.get((family.name, fault))
    if reason:
        test = pytest.mark.xfail(strict=True, reason=reason)(test)
    return test


for _family in FAMILIES:
    for _fault in FAULTS:
        if (_family.name, _fault) not in SKIPPED:
            setattr(FaultMatrixTests, f"test_{_family.name}_{_fault}".replace("-", "_"),
                    _cell_test(_family, _fault))
