"""
The epoll reactor's poll, without a legacy log context around each ready descriptor.

Twisted's ``EPollReactor.doPoll`` calls every ready descriptor through
``twisted.python.log.callWithLogger``, which copies a context dictionary so that legacy
``log.msg`` lines written meanwhile carry the descriptor's ``logPrefix`` as their system:
1.5 µs an event, a sixth of the CPU the gateway spends relaying a realtime frame and as much
again on each read of a REST request.  The gateway logs through `twisted.logger` namespaces
and reads no such prefix, so a serving process polls without it; what a descriptor raises is
still logged (`_PollLikeMixin._doReadOrWrite` already disconnects a descriptor that failed).
The reactor's poller and descriptor map have no public name; they are read here alone.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.epollreactor import EPollReactor
from twisted.logger import Logger

log = Logger()


def poll_without_log_context(reactor: Any) -> bool:
    """Give an epoll ``reactor`` the lean poll; False for any other reactor, left as it is."""
    if type(reactor) is not EPollReactor:
        return False
    # An attribute of this reactor alone, not of the class (other reactors in tests).
    reactor.doIteration = reactor.doPoll = (  # type: ignore[method-assign]
        lambda timeout: _poll(reactor, timeout))
    return True


def _poll(reactor: EPollReactor, timeout: float | None) -> None:
    """`EPollReactor.doPoll`, each ready descriptor handled in the reactor's own context."""
    # As many events as descriptors, as Twisted asks (a bound on one turn); an interrupted
    # poll is retried by Python itself (PEP 475).
    ready = reactor._poller.poll(-1 if timeout is None else timeout, len(reactor._selectables))
    selectables = reactor._selectables
    handle = reactor._doReadOrWrite
    for fd, event in ready:
        selectable = selectables.get(fd)
        if selectable is not None:
            try:
                handle(selectable, fd, event)
            except Exception:
                log.failure("a descriptor's read or write failed")
