"""The gateway as a Twisted service: listen, serve, and drain on stop."""

from __future__ import annotations

import signal
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from txgateway.config import DRAIN_SECONDS, ConfigError, GatewayConfig, with_backlog
from txgateway.gateway import build_gateway
from txgateway.http.server import HTTPServer
from txgateway.limits import ILimiter
from txgateway.logs import AccessLog
from txgateway.polling import poll_without_log_context
from txgateway.providers import IProviderPlugin
from txgateway.providers.registry import find_plugins
from txgateway.web.root import build_root

log = Logger()


#: What a part's start or stop returns: what `ensureDeferred` waits on.
Starting = Coroutine[Any, Any, Any] | Deferred[Any]


class Part(Service):
    """
    One part of the gateway as a service: ``start`` and ``stop`` may take time (opening a
    store, draining); `GatewayService` waits for each before the next.
    """

    def __init__(self, name: str, start: Callable[[], Starting] | None = None,
                 stop: Callable[[], Starting] | None = None) -> None:
        self.setName(name)
        self._start, self._stop = start, stop
        #: Fires once the part has started (at once when there is nothing to do).
        self.ready: Deferred[Any] = succeed(None)

    def startService(self) -> None:
        super().startService()
        if self._start is not None:
            self.ready = ensureDeferred(self._start())

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return ensureDeferred(self._stop()) if self._stop is not None else succeed(None)


class AccessLogFlushing(TimerService):
    """Flushes the access log every second, and closes it (flushed) at stop."""

    def __init__(self, access_log: AccessLog, clock: Any) -> None:
        super().__init__(1.0, access_log.flush)
        self.setName("access log")
        self.clock = clock
        self._access_log = access_log

    def stopService(self) -> Deferred[None]:
        return super().stopService().addCallback(lambda _: self._access_log.close())


class GatewayService(MultiService):
    """
    One gateway process.  ``listening`` fires with the listening port once it is bound.

    Its parts are child services, started in order, each once the one before has (the
    access log, limiter, store, ledger, upstream connections, then the listener), and stopped
    the other way round, each once the one after it has stopped.  Stopping the listener turns
    the gateway unready, stops accepting, lets in-flight requests finish for up to
    ``drain_seconds`` and closes what is left, before the ledger is flushed and closed.
    """

    drain_seconds = DRAIN_SECONDS
    #: Under twistd a gateway that cannot start stops the process (tests keep theirs).
    stop_reactor_on_failure = False

    def __init__(self, config: GatewayConfig, reactor: Any = None,
                 plugins: Mapping[str, IProviderPlugin] | None = None,
                 config_source: Callable[[], GatewayConfig] | None = None,
                 limiter: ILimiter | None = None,
                 listen: Callable[[Any], Deferred[Any]] | None = None) -> None:
        """
        ``config_source`` reads the config afresh, for reloads (``POST /admin/reload``, and
        SIGHUP when `reload_on_sighup` is called).  A worker (`txgateway.worker`) passes the
        parent's ``limiter`` and ``listen``, which serves the site on the socket it was given.
        """
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        if plugins is None:
            plugins = find_plugins(config.plugin_dirs)
        self.access_log = AccessLog(config.access_log)
        gateway = self.gateway = build_gateway(reactor, config, plugins, self.access_log.write,
                                               limiter)
        gateway.config_source = config_source
        self.site = HTTPServer(build_root(gateway), config.max_body_bytes, reactor)
        self._listen = listen or serverFromString(reactor, with_backlog(config.listen)).listen
        self.listening: Deferred[Any] = Deferred()
        self._port: Any = None
        for part in (AccessLogFlushing(self.access_log, reactor),
                     Part("limiter", stop=gateway.limiter.close),
                     Part("store", start=self._open_store, stop=gateway.store.close),
                     Part("ledger", stop=gateway.ledger.close),
                     Part("upstream connections", stop=gateway.pool.closeCachedConnections),
                     Part("listener", start=self._start_listening, stop=self._drain)):
            part.setServiceParent(self)

    def startService(self) -> None:
        poll_without_log_context(self._reactor)
        Service.startService(self)  # the parts one by one, below
        started = Deferred.fromCoroutine(self._start())
        started.addErrback(self._failed_to_start)

    async def _start(self) -> None:
        for part in self:
            if not self.running:  # stopped while starting
                return
            part.startService()
            if isinstance(part, Part):
                await part.ready

    async def _open_store(self) -> None:
        """Open (and migrate) the store, and learn whether keys exist."""
        await self.gateway.store.start()
        await self.gateway.authenticator.start()

    async def _start_listening(self) -> None:
        self._listened(await self._listen(self.site))

    def _failed_to_start(self, failure: Any) -> None:
        log.failure("txgateway could not start", failure)
        self.listening.errback(failure)
        if self.stop_reactor_on_failure:
            self._reactor.stop()

    def reload_on_sighup(self) -> None:
        """Reload the config on SIGHUP (the signal handler hands over to the reactor)."""
        signal.signal(signal.SIGHUP, lambda *_: self._reactor.callFromThread(self.reload))

    def reload(self) -> None:
        """Serve the config as it is now; a bad one is refused (and logged), the old one kept."""
        try:
            self.gateway.reload_from_source()
        except ConfigError as error:
            log.error("the config was not reloaded:\n  {problems}",
                      problems="\n  ".join(error.problems))
        else:
            log.info("the config was reloaded")

    def _listened(self, port: Any) -> None:
        self._port = port
        config = self.gateway.config
        address = port.getHost()
        log.info(
            "txgateway serving on {host}:{port} with providers {providers} and models {models}",
            host=getattr(address, "host", ""), port=getattr(address, "port", ""),
            providers=", ".join(sorted(config.providers)),
            models=", ".join(route.name for route in config.models),
        )
        self.listening.callback(port)

    async def _drain(self) -> None:
        gateway = self.gateway
        gateway.draining = True
        if self._port is not None:
            await self._port.stopListening()
        await gateway.accountant.drained(self._reactor, self.drain_seconds)
        await gateway.realtime.shut_down(10.0)
        await self.site.close_connections()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)  # the parts one by one, the other way round
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        for part in reversed(list(self)):
            if part.running:
                await maybeDeferred(part.stopService)
