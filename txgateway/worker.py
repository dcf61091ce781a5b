"""
One worker process of ``--workers N`` (`txgateway.workers` starts it): a whole gateway serving
the listening socket the parent bound (file descriptor 3) and talking to the parent over AMP on
file descriptor 4.

``python -m txgateway.worker CONFIG LISTEN FAMILY``: ``LISTEN`` overrides the config's endpoint
(empty: it does not), ``FAMILY`` is the socket's address family (``AF_INET``...).

SIGTERM drains it as it drains one process; the parent asks it to reload (SIGHUP is the
parent's); it stops when the parent's end of the AMP connection closes, so no worker outlives
a killed parent.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from typing import Any

import orjson
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IReactorSocket
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.protocols import amp
from twisted.python.failure import Failure

from txgateway import cluster
from txgateway.cluster import ParentLimiter, ParentSeats, ParentView
from txgateway.service import GatewayService
from txgateway.tap import gateway_config, reading

LISTENING_FD = 3
PARENT_FD = 4

log = Logger()


class ToParent(amp.AMP):
    """The worker's end: answers the parent's gathering commands from its own gateway."""

    service: GatewayService | None = None

    def __init__(self, reactor: Any) -> None:
        super().__init__()
        self._reactor = reactor

    @cluster.Scrape.responder
    def scrape(self) -> dict[str, bytes]:
        return {"text": cluster.scrape(self._gateway())}

    @cluster.Sessions.responder
    def sessions(self) -> dict[str, bytes]:
        return {"sessions": orjson.dumps(cluster.sessions_of(self._gateway()))}

    @cluster.Reload.responder
    def reload(self) -> dict[str, bytes]:
        problems = cluster.reload_here(self._gateway())
        if problems:
            log.error("the config was not reloaded:\n  {problems}",
                      problems="\n  ".join(problems))
        else:
            log.info("the config was reloaded")
        return {"problems": orjson.dumps(problems)}

    def _gateway(self) -> Any:
        assert self.service is not None
        return self.service.gateway

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.service is not None and self.service.running:  # not stopping already
            log.info("the parent is gone: stopping")
            self._reactor.stop()


def main(argv: list[str]) -> None:
    path, listen, family = argv
    from twisted.internet import reactor

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
    parent = ToParent(reactor)
    # Twisted types forProtocol as returning a Factory, though it builds a ``cls``.
    link = ServerFactory.forProtocol(lambda: parent)
    IReactorSocket(reactor).adoptStreamConnection(PARENT_FD, socket.AF_UNIX, link)  # type: ignore[arg-type]
    os.close(PARENT_FD)  # adopting duplicated it
    config = gateway_config(path, listen or None)
    limiter = ParentLimiter(parent) if config.limiter == "memory" else None
    family_number = getattr(socket, family)

    def adopt(site: Any) -> Any:
        port = IReactorSocket(reactor).adoptStreamPort(LISTENING_FD, family_number, site)
        os.close(LISTENING_FD)
        return succeed(port)

    service = GatewayService(config, reactor, config_source=reading(path, listen or None),
                             limiter=limiter, listen=adopt)
    service.gateway.view = ParentView(parent)
    service.gateway.realtime.seats = ParentSeats(parent)
    service.stop_reactor_on_failure = True
    parent.service = service
    # The parent relays reloads over AMP; a SIGHUP sent to the whole group must not kill.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    reactor.callWhenRunning(service.startService)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
