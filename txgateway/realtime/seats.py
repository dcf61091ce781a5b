"""
Where the realtime concurrency limits (``max_sessions``, ``max_sessions_per_key``) are counted.

`Seats` counts in this process.  Under ``--workers N`` one `Seats` in the parent counts for
every worker (`txgateway.cluster.ParentSeats` asks it over AMP), so the limits hold for the
gateway as a whole, not per worker.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import Interface, implementer


class TooManySessions(Exception):
    """A key's concurrency limit is reached: that caller's own rate limit."""

    #: Whether the gateway as a whole is full (an overload: retry soon, maybe elsewhere).
    overloaded = False


class GatewayFull(TooManySessions):
    """The gateway's own session limit is reached."""

    overloaded = True


class ISeats(Interface):
    """The count of open realtime sessions, against the limits."""

    def take(session_id: str, key_id: str | None, max_sessions: int,
             max_sessions_per_key: int) -> Deferred[None]:
        """A seat for the session, or a failure with `TooManySessions` (0: no limit)."""

    def release(session_id: str) -> None:
        """The session ended (a seat never taken is ignored)."""


@implementer(ISeats)
class Seats:
    """Seats counted in this process."""

    def __init__(self) -> None:
        self._held: dict[str, str | None] = {}
        self._per_key: dict[str | None, int] = {}

    def take(self, session_id: str, key_id: str | None, max_sessions: int,
             max_sessions_per_key: int) -> Deferred[None]:
        if max_sessions and len(self._held) >= max_sessions:
            return fail(GatewayFull(f"The gateway has reached its limit of "
                                    f"{max_sessions} realtime sessions."))
        held = self._per_key.get(key_id, 0)
        if max_sessions_per_key and held >= max_sessions_per_key:
            return fail(TooManySessions(f"This key has reached its limit of "
                                        f"{max_sessions_per_key} realtime sessions."))
        self._held[session_id] = key_id
        self._per_key[key_id] = held + 1
        return succeed(None)

    def release(self, session_id: str) -> None:
        if session_id not in self._held:
            return
        key_id = self._held.pop(session_id)
        held = self._per_key[key_id] - 1
        if held:
            self._per_key[key_id] = held
        else:
            del self._per_key[key_id]
