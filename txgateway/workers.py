"""
``--workers N``: N gateway processes serving one listen address, and the parent that keeps
them.

The parent binds the config's endpoint, one ``SO_REUSEPORT`` socket per worker for TCP (the
kernel spreads connections evenly; `reuse_port_sockets`) or one shared socket for UNIX, and
keeps them open, so connections queue while a worker restarts.  It never accepts itself: it
spawns ``python -m txgateway.worker`` with the worker's socket as file descriptor 3 and one end
of a socket pair as 4, on which the two speak AMP (`txgateway.cluster`).  Over it the parent
holds what must be counted once: the memory limiter's windows and spend (so a budget is exact
across workers; a Redis limiter is shared by the workers directly) and the realtime sessions'
seats (so ``max_sessions`` and ``max_sessions_per_key`` hold for the gateway; a dead worker's
seats are freed with it), and it gathers what the
user sees as one gateway: ``/metrics`` summed, the realtime sessions listed together, a
reload done everywhere.  The ledger needs nothing: every worker writes its own rows to the
shared store.

A worker that dies is started again, after a backoff that doubles while workers die young.
SIGTERM drains every worker (each as one process drains) before the parent exits; SIGHUP has
every worker reload the config file, which each refuses alike when it is bad.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from typing import Any

import orjson
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IProcessTransport
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from txgateway import cluster
from txgateway.config import DRAIN_SECONDS, LISTEN_BACKLOG, GatewayConfig, with_backlog
from txgateway.limits import MemoryLimiter
from txgateway.realtime.seats import Seats
from txgateway.store import open_store

log = Logger()

#: A worker that lived this long was healthy: its death starts the backoff afresh.
HEALTHY_SECONDS = 10.0
FIRST_BACKOFF = 0.5
LONGEST_BACKOFF = 30.0
#: How long past its own drain a worker may take before it is killed.
STOP_GRACE = 15.0


class ToWorker(amp.AMP):
    """The parent's end of one worker's connection: the limiter, and the gathering."""

    def __init__(self, pool: WorkerPool) -> None:
        super().__init__()
        self._pool = pool
        #: The realtime sessions this worker holds seats for.
        self.seats: set[str] = set()

    @cluster.Admit.responder
    def admit(self, key_id: str, rpm: int, tpm: int, budget_usd: float, budget_period: str,
              estimated_tokens: int) -> Deferred[dict[str, Any]]:
        limits = cluster.limits_of(rpm, tpm, budget_usd, budget_period)
        return self._pool.limiter.admit(key_id, limits, estimated_tokens).addCallback(
            cluster.admission_answer)

    @cluster.Commit.responder
    def commit(self, key_id: str, rpm: int, tpm: int, budget_usd: float, budget_period: str,
               estimated_tokens: int, actual_tokens: int, cost_usd: float) -> Deferred[Any]:
        limits = cluster.limits_of(rpm, tpm, budget_usd, budget_period)
        return self._pool.limiter.commit(key_id, limits, estimated_tokens, actual_tokens,
                                         cost_usd).addCallback(lambda _: {})

    @cluster.Spent.responder
    def spent(self, key_id: str, rpm: int, tpm: int, budget_usd: float, budget_period: str,
              ) -> Deferred[dict[str, float]]:
        limits = cluster.limits_of(rpm, tpm, budget_usd, budget_period)
        return self._pool.limiter.spent(key_id, limits).addCallback(
            lambda spent: {"spent": spent})

    @cluster.TakeSeat.responder
    def take_seat(self, session_id: str, key_id: str | None, max_sessions: int,
                  max_sessions_per_key: int) -> Deferred[dict[str, Any]]:
        def taken(_: None) -> dict[str, Any]:
            self.seats.add(session_id)
            return {}

        return self._pool.seats.take(session_id, key_id, max_sessions,
                                     max_sessions_per_key).addCallback(taken)

    @cluster.ReleaseSeat.responder
    def release_seat(self, session_id: str) -> dict[str, Any]:
        self.seats.discard(session_id)
        self._pool.seats.release(session_id)
        return {}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The worker is gone: its sessions went with it."""
        super().connectionLost(reason)
        for session_id in self.seats:
            self._pool.seats.release(session_id)
        self.seats.clear()

    @cluster.GatherMetrics.responder
    async def gather_metrics(self) -> dict[str, bytes]:
        return {"text": await self._pool.metrics()}

    @cluster.GatherSessions.responder
    async def gather_sessions(self) -> dict[str, bytes]:
        answers = await self._pool.ask_all(cluster.Sessions)
        merged = cluster.merged_sessions(orjson.loads(answer["sessions"]) for answer in answers)
        return {"sessions": orjson.dumps(merged)}

    @cluster.ReloadAll.responder
    async def reload_all(self) -> dict[str, bytes]:
        return {"problems": orjson.dumps(await self._pool.reload())}


class _Worker(ProcessProtocol):
    transport: IProcessTransport  # spawned with the protocol, never without one
    def __init__(self, pool: WorkerPool, index: int, link: ToWorker) -> None:
        self.pool, self.index, self.link = pool, index, link
        self.started = pool.reactor.seconds()
        self.ended: Deferred[None] = Deferred()
        #: The worker's metrics as last gathered: its share of the sum once it is dead.
        self.scraped = b""

    def processEnded(self, reason: Any) -> None:
        try:
            if self.link.transport is not None:
                self.link.transport.loseConnection()
            self.pool.worker_ended(self, reason)
        finally:  # the parent's stop waits for this, whatever went wrong above
            self.ended.callback(None)


class WorkerPool(Service):
    """The parent of ``count`` workers serving the config at ``path``."""

    def __init__(self, path: str, listen: str | None, count: int, config: GatewayConfig,
                 reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self._path, self._listen, self.count, self._config = path, listen, count, config
        self.limiter = MemoryLimiter(reactor)
        self.seats = Seats()
        self.workers: dict[int, _Worker] = {}
        self._failures: dict[int, int] = {}
        #: The counters and histograms of workers that died, as last gathered.
        self._retired = b""
        self._restarts: dict[int, Any] = {}
        self._port: Any = None
        self._sockets: list[socket.socket] = []
        self._family = ""
        #: Fires with the listening address once every worker has been spawned.
        self.listening: Deferred[Any] = Deferred()

    def startService(self) -> None:
        super().startService()
        Deferred.fromCoroutine(self._start()).addErrback(self._failed_to_start)

    async def _start(self) -> None:
        # Migrate the store once, before workers race to.
        store = open_store(self._config.store, self.reactor)
        await store.start()
        await store.close()
        listen = with_backlog(self._listen or self._config.listen)
        kind = listen.split(":", 1)[0]
        if kind in ("tcp", "tcp6"):
            self._sockets = reuse_port_sockets(listen, self.count)
            self._family = "AF_INET6" if kind == "tcp6" else "AF_INET"
            address = self._sockets[0].getsockname()
        elif kind == "unix":
            self._port = await serverFromString(self.reactor, listen).listen(
                Factory.forProtocol(Protocol))
            self._port.stopReading()  # the workers accept; the parent only holds the socket
            self._sockets = [self._port.socket] * self.count
            self._family, address = "AF_UNIX", self._port.getHost().name
        else:
            raise ValueError(f"workers share tcp, tcp6 and unix sockets only, not {listen!r}: "
                             "terminate TLS in front of the gateway")
        for index in range(self.count):
            self._spawn(index)
        log.info("txgateway parent {pid} serving on {address} with {count} workers",
                 pid=os.getpid(), address=address, count=self.count)
        self.listening.callback(address)

    def _failed_to_start(self, failure: Any) -> None:
        log.failure("txgateway could not start its workers", failure)
        self.listening.errback(failure)
        self.reactor.stop()

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        link = ToWorker(self)
        self.reactor.adoptStreamConnection(ours.fileno(), socket.AF_UNIX,
                                           Factory.forProtocol(lambda: link))
        ours.close()
        worker = _Worker(self, index, link)
        try:
            self.reactor.spawnProcess(
                worker, sys.executable,
                [sys.executable, "-m", "txgateway.worker", self._path, self._listen or "",
                 self._family],
                env=dict(os.environ),
                childFDs={1: 1, 2: 2, 3: self._sockets[index].fileno(), 4: theirs.fileno()})
        finally:
            theirs.close()
        self.workers[index] = worker

    def worker_ended(self, worker: _Worker, reason: Any) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
            self._retired = cluster.summed_metrics([self._retired, worker.scraped],
                                                   growing_only=True)
        if not self.running:
            return
        lived = self.reactor.seconds() - worker.started
        failures = 0 if lived >= HEALTHY_SECONDS else self._failures.get(worker.index, 0) + 1
        self._failures[worker.index] = failures
        delay = 0.0 if failures == 0 else min(LONGEST_BACKOFF,
                                              FIRST_BACKOFF * 2 ** (failures - 1))
        log.warn("worker {index} ({pid}) ended after {lived:.1f} s ({reason}); starting it "
                 "again in {delay} s", index=worker.index, pid=worker.transport.pid,
                 lived=lived, reason=reason.getErrorMessage(), delay=delay)
        self._restarts[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    async def metrics(self) -> bytes:
        """
        Every worker's metrics summed, with the counters of workers that died as they were
        last gathered: the summed counters never go down, though what a worker counted
        after its last gathering dies with it.
        """
        workers = list(self.workers.values())
        results = await DeferredList([worker.link.callRemote(cluster.Scrape)
                                      for worker in workers], consumeErrors=True)
        texts = [self._retired]
        for worker, (ok, answer) in zip(workers, results, strict=True):
            if ok:
                worker.scraped = answer["text"]
                texts.append(worker.scraped)
            elif self.workers.get(worker.index) is worker:  # dying: not retired yet
                texts.append(cluster.summed_metrics([worker.scraped], growing_only=True))
        return cluster.summed_metrics(texts)

    def ask_all(self, command: type[amp.Command]) -> Deferred[list[dict[str, Any]]]:
        """``command``'s answer from every worker running now (one that dies meanwhile has none)."""
        asked = DeferredList([worker.link.callRemote(command)
                              for worker in self.workers.values()], consumeErrors=True)
        return asked.addCallback(lambda results: [answer for ok, answer in results if ok])

    async def reload(self) -> list[str]:
        """Every worker reloads; the problems of the first that refused (empty: all did)."""
        answers = await self.ask_all(cluster.Reload)
        for answer in answers:
            problems = orjson.loads(answer["problems"])
            if problems:
                return problems
        return []

    def reload_on_sighup(self) -> None:
        def reload() -> None:
            Deferred.fromCoroutine(self.reload()).addCallbacks(
                lambda problems: log.info("workers told to reload; refused: {problems}",
                                          problems=problems or "none"),
                lambda failure: log.failure("the workers could not reload", failure))

        signal.signal(signal.SIGHUP, lambda *_: self.reactor.callFromThread(reload))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        """SIGTERM every worker, wait for each to drain (killing laggards), then let go."""
        for pending in self._restarts.values():
            pending.cancel()
        self._restarts.clear()
        workers = list(self.workers.values())
        for worker in workers:
            with contextlib.suppress(ProcessExitedAlready):
                worker.transport.signalProcess("TERM")
        ended = DeferredList([worker.ended for worker in workers])
        timer = self.reactor.callLater(DRAIN_SECONDS + STOP_GRACE,
                                       self._kill, workers)
        await ended
        if timer.active():
            timer.cancel()
        if self._port is not None:
            await self._port.stopListening()
        else:
            for listening in self._sockets:
                listening.close()
        await self.limiter.close()

    def _kill(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if not worker.ended.called:
                log.warn("worker {index} did not drain in time: killing it", index=worker.index)
                with contextlib.suppress(ProcessExitedAlready):
                    worker.transport.signalProcess("KILL")


def reuse_port_sockets(listen: str, count: int) -> list[socket.socket]:
    """
    ``count`` listening sockets on the address of a ``tcp:`` or ``tcp6:`` endpoint
    (``port``, ``interface`` and ``backlog`` as Twisted reads them), all bound with
    ``SO_REUSEPORT``: the kernel spreads new connections evenly over them, one per worker,
    where workers sharing one socket would let whichever wakes first take a whole burst.
    The parent keeps them open, so a restarting worker's connections wait in its backlog.
    """
    kind, *fields = _endpoint_fields(listen)
    options = dict(field.split("=", 1) for field in fields if "=" in field)
    positional = [field for field in fields if "=" not in field]
    port = int(options.get("port") or positional[0])
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    interface = options.get("interface", "::" if kind == "tcp6" else "")
    backlog = int(options.get("backlog", LISTEN_BACKLOG))
    sockets = []
    for _ in range(count):
        listening = socket.socket(family, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind((interface, port))
        port = listening.getsockname()[1]  # port 0: the others join the first's
        listening.listen(backlog)
        listening.setblocking(False)
        sockets.append(listening)
    return sockets


def _endpoint_fields(description: str) -> list[str]:
    """An endpoint string split at its unescaped colons (``interface=\\:\\:1``)."""
    fields, current, escaped = [], "", False
    for character in description:
        if escaped:
            current, escaped = current + character, False
        elif character == "\\":
            escaped = True
        elif character == ":":
            fields.append(current)
            current = ""
        else:
            current += character
    return [*fields, current]
