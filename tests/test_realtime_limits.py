"""
End to end: the relay's bounds. A slow caller pauses the upstream, an oversized message is
refused with 1009, keepalive pings find a dead caller, and many sessions leave nothing behind.
"""

from __future__ import annotations

import gc
import re
import tracemalloc
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, connectWS
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from tests.realtime_harness import Client, RealtimeTestCase, until

_ITEM = re.compile(rb'"item_id":"(\d+)"')


def buffered(transport: Any) -> int:
    """Bytes a Twisted transport holds that the kernel has not taken yet."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class FloodClient(Client):
    """Keeps only each audio delta's index, since a flood is too big to parse over and over."""

    def onOpen(self) -> None:
        super().onOpen()
        self.indices: list[int] = []
        self.flooded: Deferred[None] = Deferred()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        match = _ITEM.search(payload, 0, 100)
        if match is not None:
            self.indices.append(int(match.group(1)))
        elif b'"test.flooded"' in payload[:40]:
            self.flooded.callback(None)


class SlowClientTests(RealtimeTestCase):
    async def test_slow_client_pauses_the_upstream(self) -> None:
        """
        A caller that stops reading while the upstream floods 48 MB: the gateway stops reading
        the upstream and holds little itself; once the caller reads again, every delta arrives
        in order.
        """
        count, size = 500, 96 * 1024
        client = await self.connect(protocol=FloodClient)
        [session] = self.service.gateway.realtime.active()
        upstream, caller = session._upstream.transport, session._client.transport
        client.transport.pauseProducing()
        client.send_event(type="test.flood", count=count, size=size)
        # Paused and resumed while the kernel's socket buffers fill, then paused for good.
        await until(lambda: session.tally.bytes_out > size)
        relayed = -1
        while session.tally.bytes_out != relayed:
            relayed = session.tally.bytes_out
            await deferLater(reactor, 0.3, lambda: None)
        self.assertNotIn(upstream, reactor.getReaders())
        # Kernel buffers take some of the flood; the gateway itself holds about one read.
        self.assertLess(relayed, count * size // 2)
        self.assertLess(buffered(caller), 2 * 1024 * 1024)
        client.transport.resumeProducing()
        await client.flooded
        self.assertEqual(client.indices, list(range(count)))
        self.assertIn(upstream, reactor.getReaders())


class SlowClientTimeoutTests(RealtimeTestCase):
    realtime = "{slow_client_timeout: 0.5}"

    async def test_a_caller_that_stops_reading_is_dropped(self) -> None:
        """
        A caller that reads nothing while the upstream floods is dropped once it has kept the
        relay paused for ``slow_client_timeout``: recorded with 4008, its upstream closed with
        1001, the session's tally logged.
        """
        client = await self.connect(protocol=FloodClient)
        [session] = self.service.gateway.realtime.active()
        client.transport.pauseProducing()
        client.send_event(type="test.flood", count=200, size=96 * 1024)
        started = reactor.seconds()
        await until(lambda: not self.service.gateway.realtime.active())
        self.assertLess(reactor.seconds() - started, 4)
        [(_, code, reason)] = self.fake.closes
        self.assertEqual((code, reason), (1001, "The client read nothing for 0.5 seconds."))
        [ended] = (await self.admin("/admin/realtime/sessions"))[1]["recent"]
        self.assertEqual((ended["ended_by"], ended["client_close_code"]),
                         ("slow_client_timeout", 4008))
        self.assertGreater(ended["frames_out"], 1)
        [line] = [r for r in self.access_records() if r["route"] == "realtime"]
        self.assertEqual(line["ended_by"], "slow_client_timeout")
        client.transport.resumeProducing()
        _, code, _ = await self.clients[0][1].closed
        self.assertEqual(code, 1006)
        self.assertLess(len(client.indices), 200)


class MessageSizeTests(RealtimeTestCase):
    realtime = "{max_message_bytes: 65536}"

    async def test_oversized_message_closes_with_1009(self) -> None:
        """A caller's message over the limit closes it with 1009 and closes the upstream."""
        client = await self.connect()
        await client.next("session.created")
        client.send_event(type="input_audio_buffer.append", audio="A" * 70000)
        _, code, _ = await self.clients[0][1].closed
        self.assertEqual(code, 1009)
        await until(lambda: self.fake.closes)
        self.assertEqual(self.fake.received, [])
        await until(lambda: not self.service.gateway.realtime.active())
        [ended] = self.service.gateway.realtime.recent()
        self.assertIsNotNone(ended.upstream_close)


class PingingClient(Client):
    pings = 0

    def onPing(self, payload: bytes) -> None:
        self.pings += 1
        super().onPing(payload)


class SilentClient(Protocol):
    """
    A raw TCP caller that completes the WebSocket handshake and then never sends another byte,
    so never answers a ping (a dead peer whose kernel still takes the bytes sent to it).
    """

    def __init__(self, port: int) -> None:
        self.request = (b"GET /v1/realtime?model=voice HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        b"Sec-WebSocket-Version: 13\r\n\r\n" % port)
        self.answer = b""
        #: Fires with the status line of the answer to the upgrade.
        self.upgraded: Deferred[bytes] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        if not self.upgraded.called:
            self.answer += data
            if b"\r\n\r\n" in self.answer:
                self.upgraded.callback(self.answer.split(b"\r\n", 1)[0])

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


class KeepaliveTests(RealtimeTestCase):
    # Autobahn runs ping timers in 200 ms buckets, and intervals under a second misfire.
    realtime = "{ping_interval: 1, ping_timeout: 1}"

    async def test_pings_keep_a_live_caller_and_find_a_dead_one(self) -> None:
        """
        A silent caller that answers pings stays; one that stops reading (so never answers) is
        dropped at the ping timeout, long before the idle timeout, and its upstream closed.
        """
        live = await self.connect(protocol=PingingClient)
        await deferLater(reactor, 2.5, lambda: None)
        self.assertGreaterEqual(live.pings, 2)
        self.assertFalse(self.clients[0][1].closed.called)
        dead = await self.connect(protocol=PingingClient)
        await until(lambda: len(self.service.gateway.realtime.active()) == 2)
        dead.transport.pauseProducing()
        started = reactor.seconds()
        await until(lambda: len(self.service.gateway.realtime.active()) == 1, timeout=5)
        self.assertLess(reactor.seconds() - started, 3.5)
        [ended] = self.service.gateway.realtime.recent()
        self.assertEqual(ended.ended_by, "client_ping_timeout")
        await until(lambda: self.fake.closes)
        self.assertFalse(self.clients[0][1].closed.called)
        dead.transport.resumeProducing()

    async def test_ping_timeout_closes_the_upstream_with_1001(self) -> None:
        """
        A caller dropped at the ping timeout gets its upstream closed with 1001 (going away,
        so an SDK reconnects), and the session says why it ended.
        """
        silent = SilentClient(self.port)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), silent)
        self.assertEqual(await silent.upgraded, b"HTTP/1.1 101 Switching Protocols")
        await until(lambda: self.service.gateway.realtime.active())
        started = reactor.seconds()
        await silent.lost
        self.assertLess(reactor.seconds() - started, 3.5)
        await until(lambda: self.fake.closes)
        [(_, code, reason)] = self.fake.closes
        self.assertEqual(code, 1001)
        self.assertIn("ping timeout", reason)
        await until(lambda: self.service.gateway.realtime.recent())
        [ended] = self.service.gateway.realtime.recent()
        self.assertEqual(ended.ended_by, "client_ping_timeout")


class LeakTests(RealtimeTestCase):
    realtime = "{max_sessions: 100000}"
    timeout = 240

    async def sessions(self, count: int, at_once: int = 25) -> None:
        """Open and close ``count`` sessions through the fake upstream, ``at_once`` at a time."""
        url = f"ws://127.0.0.1:{self.port}/v1/realtime?model=voice"

        async def one() -> None:
            factory = WebSocketClientFactory(url)
            factory.protocol = Client
            factory.opened, factory.closed = Deferred(), Deferred()
            connectWS(factory)
            client = await factory.opened
            await client.next("session.created")
            client.sendClose(1000)
            await factory.closed

        for _ in range(count // at_once):
            await gatherResults([Deferred.fromCoroutine(one()) for _ in range(at_once)])
        await until(lambda: not self.service.gateway.realtime.active())
        await until(lambda: len(self.fake.closes) == len(self.fake.connections))
        # The fake keeps what it saw; that is the test's memory, not the gateway's.
        self.fake.handshakes.clear()
        self.fake.received.clear()
        self.fake.closes.clear()
        self.fake.connections.clear()
        await deferLater(reactor, 0.05, lambda: None)

    def timers(self) -> list[Any]:
        return [call for call in reactor.getDelayedCalls()
                if getattr(call.func, "__name__", "") != "_notify_bucket"]

    async def test_a_thousand_sessions_leave_nothing_behind(self) -> None:
        """No session, timer, socket or memory stays behind once 1,000 sessions have ended."""
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        # Fills the recent list (kept at 200) and the caches first.
        await self.sessions(250)
        timers, sockets = len(self.timers()), len(reactor.getReaders())
        gc.collect()
        # Two rounds: a leak grows both, while what the process allocates once (a cache, a
        # buffer at a high-water mark, after hundreds of other tests in it) grows one.
        grown = []
        for _ in range(2):
            before = tracemalloc.get_traced_memory()[0]
            await self.sessions(1000)
            gc.collect()
            grown.append(tracemalloc.get_traced_memory()[0] - before)
        self.assertEqual(self.service.gateway.realtime.active(), [])
        self.assertEqual(len(self.service.gateway.realtime.recent()), 200)
        self.assertEqual(len(self.timers()), timers)
        self.assertEqual(len(reactor.getReaders()), sockets)
        # A leaked session (legs, protocols, tally) is tens of kB: 1,000 of them would be MBs.
        self.assertLess(min(grown), 1024 * 1024, f"{grown} bytes more after 1,000 sessions")
