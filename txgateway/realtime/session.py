"""
One relayed realtime session: frames both ways as they are, the tally fed on the side, the
guards (idle, duration, token budget) and the close passed across.

It knows its legs only as `ILeg`s and time only through a clock, so it is tested without
sockets; the Autobahn protocols in `txgateway.realtime.server` and `.upstream` drive it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from zope.interface import implementer

from txgateway.config import RealtimeSettings
from txgateway.logs import AccessWriter
from txgateway.metrics import GatewayMetrics
from txgateway.realtime import closing
from txgateway.realtime.events import APPEND_STARTS, error_event, event_type
from txgateway.realtime.frames import unmask
from txgateway.realtime.legs import IFrameLeg, ILeg, IUpstreamListener
from txgateway.realtime.seats import ISeats, Seats
from txgateway.realtime.stall import StallGuard
from txgateway.realtime.tally import NO_USAGE, RealtimeUsage, SessionTally


@attrs.frozen
class SessionInfo:
    """What a session is, fixed at its handshake."""

    id: str
    model: str
    provider: str
    provider_kind: str
    upstream_model: str
    key_id: str | None
    intent: str
    beta: bool
    #: The key's limits (`txgateway.limits.Limits`), told what the session used at its end.
    limits: Any = None
    #: The WebRTC or SIP call a sideband session meters (`txgateway.realtime.calls`).
    call_id: str | None = None


@implementer(IUpstreamListener)
class Session:
    """A session from the upstream's dial to both legs' close."""

    def __init__(self, info: SessionInfo, clock: Any, settings: RealtimeSettings,
                 book: SessionBook) -> None:
        self.info = info
        self.tally = SessionTally(clock.seconds())
        self.opened = False
        #: Why the session ended, when the gateway ended it (a guard, a lost peer).
        self.ended_by: str | None = None
        self.client_close: tuple[int | None, str | None] | None = None
        self.upstream_close: tuple[int | None, str | None] | None = None
        self._clock = clock
        self._settings = settings
        self._book = book
        self._client: Any = None
        self._upstream: Any = None
        #: Upstream frames that came before the caller's upgrade completed.
        self._early: list[tuple[bytes, bool]] = []
        self._last_frame = self.tally.started
        self._timers: list[Any] = []
        self._stall: StallGuard | None = None
        self._guarded = 0
        #: Why no further response may be created (the key's budget is spent), or None;
        #: asked at every ``response.create``.  Set by the caller's leg once admitted.
        self.response_guard: Callable[[Session], str | None] = _unguarded
        #: The close the upstream is given once the responses the departed caller left run end.
        self._draining: tuple[int, str] | None = None

    # The legs arrive -------------------------------------------------------------------------

    def upstream_ready(self, upstream: ILeg) -> None:
        self._upstream = upstream
        if self.client_close is not None:  # the caller left while the upstream was dialled
            upstream.close(closing.GOING_AWAY, "the client went away")

    def client_opened(self, client: ILeg) -> None:
        self._client = client
        self.opened = True
        self._book.opened(self)
        self._stall = StallGuard(self._upstream.producer, self._clock,
                                 self._settings.slow_client_timeout, self._slow_client)
        client.pause_source(self._stall)
        self._upstream.pause_source(client.producer)
        early, self._early = self._early, []
        for payload, is_binary in early:
            client.send(payload, is_binary)
        upstream = self._upstream
        if IFrameLeg.providedBy(client) and IFrameLeg.providedBy(upstream):
            limit = self._settings.max_message_bytes
            client.relay_to(upstream, True, limit, self._client_message)
            upstream.relay_to(client, False, limit, self._upstream_message)
        self._timers.append(self._clock.callLater(self._settings.max_duration, self._guard,
                                                  "session_max_duration",
                                                  "The session reached the gateway's maximum "
                                                  "duration."))
        self._timers.append(self._clock.callLater(self._settings.idle_timeout, self._idle))

    # Frames --------------------------------------------------------------------------------

    def from_client(self, payload: bytes, is_binary: bool) -> None:
        self._last_frame = self._clock.seconds()
        self.tally.client_frame(payload, is_binary)
        if (not is_binary and not payload.startswith(APPEND_STARTS)
                and payload.find(b'"response.create"', 0, 256) != -1
                and event_type(payload)[0] == "response.create" and self._spent()):
            return
        if self.upstream_close is None:
            self._upstream.send(payload, is_binary)

    def _spent(self) -> bool:
        """
        A response is asked for: it is refused, and the session cut, once a budget is reached,
        so a session overshoots its budget by one response at most.
        """
        budget = self._settings.token_budget
        if budget and self.tally.usage.total_tokens >= budget:
            self._guard("session_token_budget_exceeded",
                        f"The session used {self.tally.usage.total_tokens} tokens, "
                        f"reaching its budget of {budget}.")
            return True
        reason = self.response_guard(self)
        if reason is not None:
            self._guard("key_budget_exceeded", reason)
        return reason is not None

    def upstream_message(self, payload: bytes, is_binary: bool) -> None:
        self._last_frame = self._clock.seconds()
        usage = self.tally.server_frame(payload, is_binary)
        if self._client is None:
            self._early.append((payload, is_binary))
        elif self.client_close is None:
            self._client.send(payload, is_binary)
        self._counted(usage)

    # Frames relayed as bytes (`txgateway.realtime.frames`) are only metered here.

    def _client_message(self, frame: bytes, start: int, end: int, is_binary: bool,
                        mask: bytes | None) -> bool:
        """Metered; True (dropped) for a ``response.create`` once a budget is reached."""
        self._last_frame = self._clock.seconds()
        self.tally.client_message(frame, start, end, is_binary, mask)
        if is_binary or not self._budgeted:
            return False
        payload = unmask(frame, start, end, mask)
        return (not payload.startswith(APPEND_STARTS)
                and payload.find(b'"response.create"', 0, 256) != -1
                and event_type(payload)[0] == "response.create" and self._spent())

    def _upstream_message(self, frame: bytes, start: int, end: int, is_binary: bool,
                          mask: bytes | None) -> bool:
        self._last_frame = self._clock.seconds()
        self._counted(self.tally.server_message(frame, start, end, is_binary))
        return False

    @property
    def _budgeted(self) -> bool:
        """Whether a budget is checked at each ``response.create``."""
        return bool(self._settings.token_budget) or self.response_guard is not _unguarded

    def _counted(self, usage: RealtimeUsage) -> None:
        """Usage an upstream message reported goes to the live metrics and the budget."""
        if self._draining is not None and not self.tally.open_responses:
            self._drained()
        if usage is not NO_USAGE:
            self._book.counted(self, usage)
            budget = self._settings.token_budget
            if budget and self.tally.usage.total_tokens >= budget:
                self._guard("session_token_budget_exceeded",
                            f"The session used {self.tally.usage.total_tokens} tokens, "
                            f"reaching its budget of {budget}.")

    # Closes --------------------------------------------------------------------------------

    def upstream_closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        if self.upstream_close is not None:
            return
        self.upstream_close = (code, reason)
        if self.client_close is None and self._client is not None:
            if not was_clean and self.ended_by is None:
                self.ended_by = "upstream_lost"
            self._client.close(closing.passed_on(was_clean, code, closing.INTERNAL),
                               reason or "the provider's realtime server closed the session")
        self._ended()

    def client_closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        if self.client_close is not None:
            return
        self.client_close = (code, reason)
        if self.upstream_close is None and self._upstream is not None:
            if not was_clean and self.ended_by is None:
                self.ended_by = "client_lost"
            self._draining = (closing.passed_on(was_clean, code, closing.GOING_AWAY),
                              reason or "the client went away")
            if self.tally.open_responses:
                # Their usage is still to come: the upstream is closed once they are done.
                self._timers.append(self._clock.callLater(self._settings.drain_timeout,
                                                          self._drained))
            else:
                self._drained()
        self._ended()

    def _drained(self) -> None:
        draining, self._draining = self._draining, None
        if draining is not None and self.upstream_close is None:
            self._upstream.close(*draining)

    def client_unresponsive(self) -> None:
        """The caller stopped answering pings; it is dropped next, and closed as lost."""
        self.ended_by = self.ended_by or "client_ping_timeout"

    def refused(self) -> None:
        """The upstream could not be dialled: the session never was."""
        self.upstream_close = (None, None)
        self.client_close = (None, None)
        self._ended()

    def shut_down(self) -> None:
        """The gateway is stopping: both sides are told to go elsewhere (1001)."""
        self.ended_by = self.ended_by or "gateway_stopping"
        for leg in (self._client, self._upstream):
            if leg is not None:
                leg.close(closing.GOING_AWAY, "the gateway is shutting down")

    def _ended(self) -> None:
        if self.client_close is None or (self.upstream_close is None
                                         and self._upstream is not None):
            return
        if self.tally.ended is None:
            self.tally.ended = self._clock.seconds()
            for timer in self._timers:
                if timer.active():
                    timer.cancel()
            if self._stall is not None:
                self._stall.cancel()
            # An ended session stays in the recent list for its tally; its sockets' protocols
            # (tens of kB each) need not.
            self._client = self._upstream = self._stall = None
            self._timers.clear()
            self._book.finished(self)

    # Guards --------------------------------------------------------------------------------

    def _idle(self) -> None:
        quiet = self._clock.seconds() - self._last_frame
        if quiet >= self._settings.idle_timeout:
            self._guard("session_idle_timeout",
                        f"The session was idle for {self._settings.idle_timeout:g} seconds.")
        else:
            self._timers.append(self._clock.callLater(
                self._settings.idle_timeout - quiet, self._idle))

    def _slow_client(self) -> None:
        """
        The caller kept the relay paused too long.  It would read no error event nor close
        frame, so it is dropped at once and recorded as closed with 4008; the upstream is told
        the client went away (1001).
        """
        if self.ended_by is not None or self.client_close is not None:
            return
        self.ended_by = "slow_client_timeout"
        message = (f"The client read nothing for {self._settings.slow_client_timeout:g} "
                   "seconds.")
        self.client_close = (closing.SLOW_CLIENT, message)
        if self.upstream_close is None:
            self._upstream.close(closing.GOING_AWAY, message)
        self._client.drop()
        self._ended()

    def end(self, code: str, message: str) -> None:
        """A limit watched outside the session (a call's key budget) is crossed."""
        self._guard(code, message)

    def _guard(self, code: str, message: str) -> None:
        """A limit is crossed: say so, cancel what runs upstream, close both with 1008."""
        if self.ended_by is not None or self.client_close is not None:
            return
        self.ended_by = code
        self._guarded += 1
        self._client.send(error_event(code, message, f"event_gw_{self._guarded}"), False)
        if self.upstream_close is None:
            if self.tally.open_responses:
                self._upstream.send(b'{"type":"response.cancel"}', False)
            self._upstream.close(closing.POLICY, message)
        self._client.close(closing.POLICY, message)

    def as_json(self) -> dict[str, Any]:
        info, tally = self.info, self.tally
        return {
            "id": info.id,
            "model": info.model,
            "provider": info.provider,
            "upstream_model": info.upstream_model,
            "key": info.key_id,
            "intent": info.intent,
            "beta": info.beta,
            "call_id": info.call_id,
            "started_at": _iso(tally.started),
            "ended_at": None if tally.ended is None else _iso(tally.ended),
            "ended_by": self.ended_by,
            "client_close_code": None if self.client_close is None else self.client_close[0],
            "upstream_close_code": (None if self.upstream_close is None
                                    else self.upstream_close[0]),
            "upstream_session_id": tally.upstream_session_id,
            **tally.as_json(),
        }


def _iso(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


class SessionBook:
    """
    Every session of the gateway: admission against the concurrency limits, the active and
    recently ended ones (for the admin API), and their metrics and access log lines.
    """

    recent_kept = 200

    def __init__(self, clock: Any, settings: RealtimeSettings, metrics: GatewayMetrics,
                 access_log: AccessWriter,
                 on_ended: Callable[[Session], None] = lambda session: None) -> None:
        self._clock = clock
        self.settings = settings
        self._metrics = metrics
        self._log = access_log
        #: Told of each opened session's end, for the usage ledger and the limiter.
        self._on_ended = on_ended
        self._active: dict[str, Session] = {}
        #: Where the concurrency limits are counted (a worker's: the parent's).
        self.seats: ISeats = Seats()
        self._recent: deque[Session] = deque(maxlen=self.recent_kept)
        self._all_ended: Deferred[None] | None = None

    def admit(self, info: SessionInfo) -> Deferred[Session]:
        """
        A new session once it has a seat (failing with `TooManySessions`), counted against
        the limits at once (dials included).
        """
        settings = self.settings
        taken = self.seats.take(info.id, info.key_id, settings.max_sessions,
                                settings.max_sessions_per_key)
        return taken.addCallback(lambda _: self._seated(info))

    def _seated(self, info: SessionInfo) -> Session:
        session = Session(info, self._clock, self.settings, self)
        self._active[info.id] = session
        return session

    def opened(self, session: Session) -> None:
        self._metrics.realtime_session(session.info.model, session.info.provider_kind, 1)

    def counted(self, session: Session, usage: RealtimeUsage) -> None:
        self._metrics.realtime_usage(session.info.model, session.info.provider_kind, usage)

    async def shut_down(self, timeout: float) -> None:
        """Close every session (1001) and wait up to ``timeout`` seconds for them to end."""
        if not self._active:
            return
        self._all_ended = ended = Deferred[None]()
        for session in list(self._active.values()):
            session.shut_down()
        try:
            await ended.addTimeout(timeout, self._clock)
        except DeferredTimeout:
            pass

    def finished(self, session: Session) -> None:
        info = session.info
        del self._active[info.id]
        self.seats.release(info.id)
        if session.opened:
            self._record(session)
        if not self._active and self._all_ended is not None:
            ended, self._all_ended = self._all_ended, None
            ended.callback(None)

    def _record(self, session: Session) -> None:
        """An opened session's end: metrics, the recent list, one access log line."""
        info = session.info
        tally = session.tally
        duration = (tally.ended or tally.started) - tally.started
        self._metrics.realtime_session(info.model, info.provider_kind, -1)
        self._metrics.realtime_duration(info.model, info.provider_kind, duration)
        self._recent.appendleft(session)
        record = session.as_json()
        record["session_id"] = record.pop("id")
        self._log({"route": "realtime", "status": 101,
                   "duration_ms": round(duration * 1000, 3), **record})
        self._on_ended(session)

    def active(self) -> list[Session]:
        return list(self._active.values())

    def recent(self) -> list[Session]:
        return list(self._recent)

    def find(self, session_id: str) -> Session | None:
        return self._active.get(session_id) or next(
            (s for s in self._recent if s.info.id == session_id), None)


def _unguarded(session: Session) -> str | None:
    """The response guard of a session no key budget watches."""
    return None
