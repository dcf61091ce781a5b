"""The gateway as a Twisted service: listen, serve, and drain on stop."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from txgateway.config import GatewayConfig
from txgateway.gateway import build_gateway
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

    def __init__(self, config: GatewayConfig, reactor: Any = None,
                 plugins: Mapping[str, IProviderPlugin] | None = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        if plugins is None:
            plugins = find_plugins(config.plugin_dirs)
        self.access_log = AccessLog(config.access_log)
        self._flushing = LoopingCall(self.access_log.flush)
        self._flushing.clock = reactor
        self.gateway = build_gateway(reactor, config, plugins, self.access_log.logger)
        self.site = GatewaySite(build_root(self.gateway), config.max_body_bytes)
        self.listening: Deferred[Any] = Deferred()
        self._port: Any = None

    def startService(self) -> None:
        super().startService()
        self._flushing.start(1.0, now=False)
        config = self.gateway.config
        failures: list[Any] = []
        serverFromString(self._reactor, config.listen).listen(self.site).addCallbacks(
            self._listened, failures.append)
        if failures:  # a TCP listen fails at once: let twistd report it and exit
            failures[0].raiseException()

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
        self._flushing.stop()
        self.access_log.close()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())
