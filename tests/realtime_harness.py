"""A gateway with realtime routes, a fake realtime upstream, and a recording WebSocket client."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import orjson
import treq
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol, connectWS
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.fake_realtime import start_fake_realtime
from tests.gateway_harness import closed_port, with_own_store
from txgateway.config import load_config
from txgateway.providers.registry import find_plugins
from txgateway.service import GatewayService

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
access_log: {access_log}
admin: {{token: admin-secret}}
realtime: {realtime}
upstream:
  connect_timeout: 2
providers:
  fake:
    plugin: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    api_key: sk-upstream-secret
  nowhere:
    plugin: openai
    base_url: http://127.0.0.1:{closed_port}/v1
  demo:
    plugin: demo
    chunk_delay: 0
models:
  - name: demo
    provider: demo
  - name: voice
    provider: fake
    model: gpt-realtime
  - name: gpt-4o-transcribe
    provider: fake
  - name: unreachable
    provider: nowhere
  - name: "refuse-*"
    provider: fake
"""


async def until(condition: Any, timeout: float = 5.0) -> None:
    """Poll ``condition`` every 10 ms until it holds; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"still false after {timeout} s: {condition}")
        await deferLater(reactor, 0.01, lambda: None)


class Client(WebSocketClientProtocol):
    """Records every message and the close; ``next(type)`` waits for an event of a type."""

    def onOpen(self) -> None:
        self.messages: list[tuple[bytes, bool]] = []
        self._waiting: list[tuple[str, Deferred[dict[str, Any]]]] = []
        self._seen = 0
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.append((payload, isBinary))
        self._wake()

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(p) for p, binary in self.messages if not binary]

    def send_event(self, **event: Any) -> None:
        self.sendMessage(orjson.dumps(event))

    def next(self, kind: str) -> Deferred[dict[str, Any]]:
        """The first event of ``kind`` not already handed out by `next`."""
        waiter: Deferred[dict[str, Any]] = Deferred()
        self._waiting.append((kind, waiter))
        self._wake()
        return waiter

    def _wake(self) -> None:
        events = self.events()
        for kind, waiter in list(self._waiting):
            for index in range(self._seen, len(events)):
                if events[index]["type"] == kind:
                    self._seen = index + 1
                    self._waiting.remove((kind, waiter))
                    waiter.callback(events[index])
                    break

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.factory.opened is not None and not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(reason))
        self.factory.closed.callback((wasClean, code, reason))


class RealtimeTestCase(TestCase):
    """A fresh fake upstream and gateway per test; every socket is closed in cleanup."""

    #: The gateway's config, formatted with the upstream ports, access log and ``realtime``.
    config = CONFIG
    realtime = "{}"
    timeout = 15
    #: Starts the fake upstream: its state and its listening port.
    start_fake = staticmethod(start_fake_realtime)

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self.fake, self.fake_port = self.start_fake()
        directory = tempfile.mkdtemp()
        self.access_log_path = os.path.join(directory, "access.log")
        config = load_config(self.config.format(
            upstream_port=self.fake_port.getHost().port, closed_port=closed_port(),
            access_log=self.access_log_path, realtime=self.realtime), find_plugins)
        self.service = GatewayService(with_own_store(config, directory), reactor)
        self.service.startService()
        self.port = (await self.service.listening).getHost().port
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.clients: list[Any] = []
        self.addCleanup(self._stop)

    async def _stop(self) -> None:
        for connector, factory in self.clients:
            connector.disconnect()
            if not factory.closed.called:
                await factory.closed
        await self.service.stopService()
        for connection in list(self.fake.connections):
            if connection.state != connection.STATE_CLOSED:
                connection.dropConnection(abort=True)
        await self.fake_port.stopListening()
        # Autobahn's batched timers keep a bucket armed after its calls were cancelled.
        for call in reactor.getDelayedCalls():
            if getattr(call.func, "__name__", "") == "_notify_bucket":
                call.cancel()

    async def connect(self, query: str = "model=voice", headers: dict[str, str] | None = None,
                      protocols: list[str] | None = None, protocol: type[Client] = Client,
                      path: str = "/v1/realtime") -> Client:
        url = f"ws://127.0.0.1:{self.port}{path}?{query}"
        factory = WebSocketClientFactory(url, headers=headers or {}, protocols=protocols)
        factory.protocol = protocol
        factory.opened = Deferred()
        factory.closed = Deferred()
        self.clients.append((connectWS(factory), factory))
        return await factory.opened

    async def admin(self, path: str, token: str = "admin-secret") -> Any:
        response = await treq.get(self.base_url + path, pool=self.pool,
                                  headers={"authorization": f"Bearer {token}"})
        return response.code, await response.json()

    async def metrics(self) -> str:
        response = await treq.get(self.base_url + "/metrics", pool=self.pool)
        return (await response.content()).decode()

    def access_records(self) -> list[dict[str, Any]]:
        self.service.access_log.flush()
        with open(self.access_log_path, "rb") as log:
            return [orjson.loads(line) for line in log]
