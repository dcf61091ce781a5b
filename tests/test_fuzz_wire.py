"""
The wire fuzz (issue 16, item 1): odd headers and framing, paths and queries, multipart
bodies, and realtime handshakes and frames, as raw bytes against a running gateway.  Each case
gets a 4xx in the caller's dialect (or a close code), never a 5xx nor a hang; trial fails a
test that logs an error, so a traceback fails it too; ``/health`` answers after.
FUZZ_CASES raises the count per strategy (``bench/fuzz_soak.py`` runs 100,000 and more).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import treq
from hypothesis import HealthCheck, Phase, given, settings
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from tests.fuzz_wire import (
    GOOD_KEY,
    cancel_batched_timers,
    header_requests,
    hunt_http,
    multipart_requests,
    path_requests,
    run_ws,
    ws_frame,
    ws_sessions,
)
from tests.gateway_harness import GatewayTestCase
from tests.test_keys import KEYS_CONFIG

CASES = int(os.environ.get("FUZZ_CASES", "80"))
FUZZ_CONFIG = KEYS_CONFIG + "realtime:\n  max_message_bytes: 65536\n"


def hunt(strategy: Any, probe: Callable[[Any], str | None], cases: int) -> list[tuple[Any, str]]:
    """Every case ``strategy`` draws that ``probe`` finds wrong, with what was wrong."""
    found: list[tuple[Any, str]] = []

    @settings(max_examples=cases, phases=[Phase.generate], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(case: Any) -> None:
        problem = probe(case)
        if problem is not None:
            found.append((case, problem))

    run()
    return found


#: Found by bench/fuzz_soak.py: frames declaring a length just over the limit, sent back to back.
OVER_THE_LIMIT = [ws_frame(2, b"x" * 10, length=65537)] * 2 + [ws_frame(1, b"\xed\xa0\x80")]
UPGRADE = (b"GET /v1/realtime?model=demo HTTP/1.1\r\nHost: gw\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer " + GOOD_KEY + b"\r\n\r\n")


class WireFuzz(GatewayTestCase):
    config = FUZZ_CONFIG
    timeout = 900

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    async def check(self, strategy: Any, probe: Callable[[Any], str | None]) -> None:
        found = await deferToThread(hunt, strategy, probe, CASES)
        await deferLater(reactor, 0.6)  # an upstream body's stall timer may outlive its call
        # One example of each kind of problem, shortened.
        kinds = {problem: repr(case)[:400] for case, problem in found}
        self.assertEqual(kinds, {}, f"{len(found)} of {CASES} cases")
        health = await treq.get(self.base_url + "/health", pool=self.pool, timeout=2)
        self.assertEqual(health.code, 200)
        await health.content()

    def http(self, case: tuple[bytes, bool]) -> str | None:
        return hunt_http(self.port, *case)

    async def test_headers_and_framing(self) -> None:
        await self.check(header_requests(), self.http)

    async def test_paths_and_queries(self) -> None:
        await self.check(path_requests(), self.http)

    async def test_multipart_bodies(self) -> None:
        await self.check(multipart_requests(), self.http)

    async def test_frames_over_the_limit_end_the_session(self) -> None:
        """
        Found by the soak: the first frame declares 65,537 bytes, so everything after it (the
        caller's close too) is inside that payload.  The gateway answers 1009 at the header and
        drops the connection once its close handshake timeout (5 s) passes with no reply.
        """
        self.addCleanup(cancel_batched_timers, reactor)
        problem = await deferToThread(run_ws, self.port, UPGRADE, OVER_THE_LIMIT, 8.0)
        self.assertIsNone(problem)

    async def test_realtime_handshakes_and_frames(self) -> None:
        self.addCleanup(cancel_batched_timers, reactor)
        await self.check(ws_sessions(), lambda case: run_ws(self.port, *case))
        for _ in range(100):
            if not self.service.gateway.realtime.active():
                break
            await deferLater(reactor, 0.05)
        self.assertEqual(self.service.gateway.realtime.active(), [])
