"""
The two legs of a relayed session, as the session sees them: the caller's WebSocket and the
upstream one (a network socket, or an in-process server such as the demo's).
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.websocket import WebSocketAdapterProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from txgateway.realtime import closing
from txgateway.realtime.frames import Meter, Relay


class ILeg(Interface):
    """One side of a session: frames out, a close, and flow control."""

    producer = Attribute(
        "The IPushProducer that pausing this leg's input pauses: the other leg registers it "
        "with its own transport, so a side that cannot keep up stops the one feeding it."
    )

    def send(payload: bytes, is_binary: bool) -> None:  # noqa: N805 (zope interface)
        """Send one message, as it is."""

    def close(code: int, reason: str) -> None:  # noqa: N805
        """Start closing with any sendable close code."""

    def drop() -> None:  # noqa: N805
        """Drop the connection at once, without a closing handshake the peer would not read."""

    def pause_source(producer: IPushProducer) -> None:  # noqa: N805
        """Let ``producer`` (the other leg's input) be paused while this leg's output is full."""


class IFrameLeg(ILeg):
    """A leg over a WebSocket of the network, whose frames may be relayed as bytes."""

    def relay_to(sink: IFrameLeg, masked: bool, limit: int, meter: Meter) -> None:  # noqa: N805
        """
        Relay this leg's data frames to ``sink`` as bytes from the next frame boundary on,
        each message told to ``meter``; ``masked`` when this leg is the caller's.
        """


class IUpstreamListener(Interface):
    """What an upstream leg reports to its session."""

    def upstream_message(payload: bytes, is_binary: bool) -> None:  # noqa: N805
        """A message from the upstream."""

    def upstream_closed(was_clean: bool, code: int | None, reason: str | None) -> None:  # noqa: N805
        """The upstream connection is gone."""


@implementer(IPushProducer)
class Throttle:
    """
    Pauses and resumes a transport for another transport's buffer, and nothing more.

    A transport that loses its connection calls its producer's ``stopProducing``; registering
    the other leg's transport directly would drop that leg without the close frame and code
    the session sends it, so the stop is ignored here.
    """

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def pauseProducing(self) -> None:
        self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._transport.resumeProducing()

    def stopProducing(self) -> None:
        """The session closes the other leg itself, with a close code."""


# Autobahn's own two bases disagree on the types of ``peer`` and ``_transport_details``.
class WebSocketLeg(WebSocketAdapterProtocol, WebSocketProtocol):  # type: ignore[misc]
    """
    What both Autobahn legs (the caller's and the network upstream's) do alike for `ILeg`, and
    two of Autobahn's per-message steps cut short: profiled under load, they were a tenth of
    the relay's CPU for nothing the gateway uses.  The bases are those of both of Autobahn's
    Twisted protocols, which the legs mix this into.
    """

    transport: Any
    #: The relay reading this leg once it relays as bytes; one waiting for a frame boundary.
    _relay: Relay | None = None
    _waiting: Relay | None = None
    #: The relay writing into this leg, which Autobahn's own frames wait for.
    _inbound: Relay | None = None

    def relay_to(self, sink: Any, masked: bool, limit: int, meter: Meter) -> None:
        relay = Relay(self, sink, masked, limit, meter)
        sink._inbound = self._waiting = relay
        self._take_over()

    def _take_over(self) -> None:
        """Autobahn hands the reading over between frames, with nothing of one buffered."""
        if not self.data and getattr(self, "current_frame", None) is None and not getattr(
                self, "inside_message", False):
            self._relay, self._waiting = self._waiting, None

    def dataReceived(self, data: bytes) -> None:
        relay = self._relay
        if relay is not None:
            relay.feed(data)
            return
        super().dataReceived(data)
        if self._waiting is not None:
            self._take_over()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        relay = self._relay
        self._relay = self._waiting = self._inbound = None
        if relay is not None:
            relay.lost()
        super().connectionLost(reason)

    def onMessageEnd(self) -> None:
        """Deliver the message without Autobahn's ``message`` observer event (a Deferred each)."""
        if not self.failedByMe:
            self.onMessage(b"".join(self.message_data),
                           self.message_is_binary)
        self.message_data.clear()

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        Write an open connection's frame straight to the transport: Autobahn's own path formats
        a debug line's arguments for every frame even when debug logging is off.  A frame
        relayed into this leg and not yet whole (or its message) is waited for.
        """
        inbound = self._inbound
        if inbound is not None and inbound.holds(data):
            return
        if (sync or chopsize or self.send_queue
                or self.state != WebSocketProtocol.STATE_OPEN):
            super().sendData(data, sync, chopsize)
            return
        self.transport.write(data)
        self.trafficStats.outgoingOctetsWireLevel += len(data)

    @property
    def producer(self) -> Any:
        return Throttle(self.transport)

    def send(self, payload: bytes, is_binary: bool) -> None:
        """Frames for a leg already closing are dropped (Autobahn would raise)."""
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(payload, is_binary)

    def close(self, code: int, reason: str) -> None:
        closing.close(self, code, reason)

    def drop(self) -> None:
        self.dropConnection(abort=True)
