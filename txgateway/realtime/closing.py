"""
Close codes across the relay.

Autobahn's ``sendClose`` takes only 1000 and 3000-4999, yet a relay must send 1001, 1008 or
1011 and pass on whatever code a peer used; `close` sends any code that may appear on the wire
through ``sendCloseFrame``.  Codes that only describe what happened locally (1005, 1006, 1015)
never go on the wire: they become the code the other side should see.
"""

from __future__ import annotations

from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol

NORMAL = 1000
GOING_AWAY = 1001
POLICY = 1008
INTERNAL = 1011
#: Private use: the caller read too slowly (a slow consumer).
SLOW_CLIENT = 4008
#: RFC 6455: a close frame's reason is at most 123 bytes of UTF-8.
MAX_REASON_BYTES = 123


def sendable(code: int | None) -> bool:
    """Whether ``code`` may be sent in a close frame."""
    return code is not None and (
        1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999)


def clip_reason(reason: str) -> bytes:
    """The reason in UTF-8, cut to 123 bytes on a character boundary."""
    data = reason.encode("utf-8")[:MAX_REASON_BYTES]
    return data.decode("utf-8", "ignore").encode("utf-8")


def passed_on(was_clean: bool, code: int | None, lost: int) -> int:
    """
    The code to send one side when the other side closed with ``code``: the same code when
    it can be sent, 1000 for a clean close without one, ``lost`` when the connection dropped.
    """
    if sendable(code):
        return code  # type: ignore[return-value]
    if was_clean and code in (None, 1005):
        return NORMAL
    return lost


def close(protocol: Any, code: int, reason: str) -> None:
    """
    Start the closing handshake with ``code`` (any sendable code); a connection not yet open
    is dropped, one already closing is left alone.
    """
    state = protocol.state
    if state == WebSocketProtocol.STATE_OPEN:
        protocol.sendCloseFrame(code=code, reasonUtf8=clip_reason(reason))
    elif state in (WebSocketProtocol.STATE_CONNECTING, WebSocketProtocol.STATE_PROXY_CONNECTING):
        protocol.dropConnection(abort=True)
