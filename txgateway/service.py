"""The gateway as a Twisted service: listen, serve, and drain on stop."""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from txgateway.config import ConfigError, GatewayConfig
from txgateway.gateway import build_gateway
from txgateway.limits import ILimiter
from txgateway.logs import AccessLog
from txgateway.providers import IProviderPlugin
from txgateway.providers.registry import find_plugins
from txgateway.web.root import build_root
from txgateway.web.site import GatewaySite

log = Logger()


class GatewayService(MultiService):
    """
    One gateway process.  ``listening`` fires with the listening port once it is bound.

    At stop it turns unready, stops accepting, lets in-flight requests finish for up to
    ``drain_seconds``, then closes its upstream connections.
    """

    drain_seconds = 30.0
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
        self._flushing = LoopingCall(self.access_log.flush)
        self._flushing.clock = reactor
        self.gateway = build_gateway(reactor, config, plugins, self.access_log.write, limiter)
        self.gateway.config_source = config_source
        self.site = GatewaySite(build_root(self.gateway), config.max_body_bytes)
        self._listen = listen or serverFromString(reactor, config.listen).listen
        self.listening: Deferred[Any] = Deferred()
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        self._flushing.start(1.0, now=False)
        started = Deferred.fromCoroutine(self._start())
        started.addErrback(self._failed_to_start)

    async def _start(self) -> None:
        """Open (and migrate) the store, learn whether keys exist, then listen."""
        gateway = self.gateway
        await gateway.store.start()
        await gateway.authenticator.start()
        port = await self._listen(self.site)
        self._listened(port)

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

    async def _stop(self) -> None:
        gateway = self.gateway
        gateway.draining = True
        if self._port is not None:
            await self._port.stopListening()
        await gateway.accountant.drained(self._reactor, self.drain_seconds)
        await gateway.realtime.shut_down(10.0)
        await self.site.close_connections()
        await gateway.pool.closeCachedConnections()
        await gateway.ledger.close()
        await gateway.store.close()
        await gateway.limiter.close()
        self._flushing.stop()
        self.access_log.close()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())
