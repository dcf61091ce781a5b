"""The gateway's lifecycle: its parts are child services, started in order, stopped in reverse."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import maybeDeferred

from tests.gateway_harness import GatewayTestCase

PARTS = ["access log", "limiter", "store", "ledger", "upstream connections", "listener"]


class LifecycleTests(GatewayTestCase):
    async def test_parts_start_in_order_and_stop_the_other_way(self) -> None:
        service = self.service
        self.assertEqual([part.name for part in service], PARTS)
        self.assertTrue(all(part.running for part in service))
        stopped: list[str] = []

        def recording(part: Any) -> Any:
            stop = part.stopService

            def stopService() -> Any:
                # Each part stops only once the one started after it has finished stopping.
                self.assertEqual(stopped, PARTS[:PARTS.index(part.name):-1])
                return maybeDeferred(stop).addCallback(lambda _: stopped.append(part.name))

            return stopService

        for part in service:
            part.stopService = recording(part)
        await service.stopService()
        self.assertEqual(stopped, PARTS[::-1])
        self.assertFalse(any(part.running for part in service))
        self.assertTrue(self.service.gateway.draining)
