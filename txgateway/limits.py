"""
Per-key rate limits and budgets: `ILimiter`, with a one-process memory backend and a Redis
backend that several gateway processes share.

Rate windows are sliding minutes approximated by two fixed windows: a key's use at time ``t``
is ``previous * (1 - elapsed / 60) + current``, where ``current`` counts what was taken in the
fixed minute holding ``t``, ``previous`` what was taken in the minute before, and ``elapsed`` the
seconds since the current minute began.  It needs two counters per limit, never forgets a burst
at a minute's edge the way one fixed window does, and is what peer gateways use.  A request is
admitted when its request and its estimated tokens fit under both limits; the tokens are then
corrected by `ILimiter.commit` once the real count is known.

Budgets are in USD per calendar day or month in UTC, or in total.  A request is admitted while
the period's spend is below the budget: its real cost is only known after it, so the last
admitted request may overshoot.  Spend is tracked whether a budget is set or not, so the
admin API can show it.

Both backends take the same decisions for the same sequence: the Redis scripts mirror the
arithmetic of this module step by step, in doubles, and return the raw counters from which the
same Python code builds the `Admission`.  The Redis backend uses the server's clock (``TIME``
inside the scripts), so the clocks of the gateway processes do not matter.

When Redis cannot be reached within a short timeout the Redis limiter fails open: requests are
admitted without limits, with one log line when the outage starts and one when it ends, as peer
gateways do; a gateway that must never overspend would rather fail closed, but then an outage of
a cache takes the whole gateway down.  Costs committed during an outage are lost.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from importlib.resources import files
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

WINDOW = 60.0
"""The length of a rate window, in seconds."""

Period = Literal["day", "month", "total"]

_log = Logger()


@attrs.frozen
class Limits:
    """A key's limits; 0 turns one off."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    budget_usd: float = 0.0
    #: Calendar periods in UTC, or ``total`` for a budget that never renews.
    budget_period: Period = "month"


@attrs.frozen
class Admission:
    """The answer to one request: admitted, or refused with what the 429 needs."""

    allowed: bool
    #: ``requests``, ``tokens`` or ``budget`` when refused.
    reason: str = ""
    #: A sentence for the caller, naming the limit.
    message: str = ""
    #: Seconds until a retry can succeed (0 when waiting will not help); ceil it for Retry-After.
    retry_after: float = 0.0
    #: OpenAI's ``x-ratelimit-*`` headers, for the limits that are set.
    headers: Mapping[str, str] = attrs.field(factory=dict)


ADMITTED = Admission(allowed=True, headers=MappingProxyType({}))
"""Admitted with no limit to report (no limits set, or the Redis limiter failing open)."""


class ILimiter(Interface):
    """Rate limits and budgets of caller keys."""

    def admit(key_id: str, limits: Limits, estimated_tokens: int) -> Deferred[Admission]:
        """
        Check the budget, then take one request and ``estimated_tokens`` from the key's
        per-minute windows, atomically; a refusal takes nothing.
        """

    def commit(key_id: str, limits: Limits, estimated_tokens: int, actual_tokens: int,
               cost_usd: float) -> Deferred[None]:
        """
        After the response: correct the token window by ``actual - estimated`` (never below
        nothing used), and add the cost to the spend of the current budget period.
        """

    def spent(key_id: str, limits: Limits) -> Deferred[float]:
        """The spend of the key's current budget period."""

    def check() -> Deferred[bool]:
        """Whether the backend answers (readiness)."""

    def close() -> Deferred[None]:
        """Let go of connections."""


def open_limiter(url: str, reactor: Any) -> ILimiter:
    """The limiter a URL names: ``memory``, or ``redis://[:password@]host:port/db?prefix=...``."""
    if url == "memory":
        return MemoryLimiter(reactor)
    if url.startswith("redis://"):
        return RedisLimiter.from_url(url, reactor)
    raise ValueError(f"unknown limiter URL {url!r}: expected 'memory' or 'redis://...'")


# The arithmetic both backends share; the Lua scripts below repeat it operation by operation.

def window_index(now: float) -> int:
    return math.floor(now / WINDOW)


def weighted_use(previous: int, current: int, elapsed: float) -> float:
    return previous * (1 - elapsed / WINDOW) + current


def refusal(limits: Limits, estimated_tokens: int, spend: float, requests: tuple[int, int],
            tokens: tuple[int, int], elapsed: float) -> str:
    """Which limit refuses a request, or "" (``requests``/``tokens`` are (previous, current))."""
    if limits.budget_usd > 0 and spend >= limits.budget_usd:
        return "budget"
    rpm = limits.requests_per_minute
    if rpm > 0 and weighted_use(*requests, elapsed) + 1 > rpm:
        return "requests"
    tpm = limits.tokens_per_minute
    if tpm > 0 and weighted_use(*tokens, elapsed) + estimated_tokens > tpm:
        return "tokens"
    return ""


def corrected(previous: int, current: int, delta: int) -> tuple[int, int]:
    """Tokens after a correction: a refund comes off the current minute, then the previous one."""
    if delta >= 0:
        return previous, current + delta
    refund = -delta
    taken = min(current, refund)
    return max(0, previous - (refund - taken)), current - taken


def budget_period(now: float, period: Period) -> tuple[str, float | None]:
    """The name of the budget period holding ``now`` and when it ends (None: never)."""
    if period == "total":
        return "total", None
    day = datetime.fromtimestamp(now, UTC).date()
    if period == "day":
        return day.isoformat(), (math.floor(now / 86400) + 1) * 86400.0
    following = day.replace(year=day.year + day.month // 12, month=day.month % 12 + 1, day=1)
    start = datetime(following.year, following.month, 1, tzinfo=UTC)
    return f"{day.year:04d}-{day.month:02d}", start.timestamp()


def _until_free(previous: int, current: int, elapsed: float, cost: int, limit: int) -> float:
    """Seconds until ``cost`` more fits under ``limit``, as the weighted use decays."""
    if cost > limit:
        return 0.0
    if current + cost <= limit:
        if previous == 0:
            return 0.0
        return _seconds(max(0.0, WINDOW * (1 - (limit - current - cost) / previous) - elapsed))
    return _seconds((WINDOW - elapsed) + WINDOW * (1 - (limit - cost) / current))


def _until_reset(previous: int, current: int, elapsed: float) -> float:
    """Seconds until nothing is in use any more (OpenAI's reset-to-initial-state)."""
    if current > 0:
        return _seconds(2 * WINDOW - elapsed)
    if previous > 0:
        return _seconds(WINDOW - elapsed)
    return 0.0


def format_duration(seconds: float) -> str:
    """A duration as OpenAI's rate-limit headers write it: ``20ms``, ``1.5s``, ``6m0s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    text = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{int(minutes)}m{text}" if minutes else text


def admission(limits: Limits, now: float, estimated_tokens: int, reason: str, spend: float,
              requests: tuple[int, int], tokens: tuple[int, int]) -> Admission:
    """
    The answer, from the key's state after the decision: the windows as (previous, current)
    rolled to ``now``, holding this request when it was admitted.
    """
    elapsed = now - window_index(now) * WINDOW
    headers = {}
    rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
    for name, limit, counts in (("requests", rpm, requests), ("tokens", tpm, tokens)):
        if limit > 0:
            used = weighted_use(*counts, elapsed)
            headers[f"x-ratelimit-limit-{name}"] = str(limit)
            headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(limit - used)))
            headers[f"x-ratelimit-reset-{name}"] = format_duration(_until_reset(*counts, elapsed))
    if not reason:
        return Admission(allowed=True, headers=headers)
    if reason == "budget":
        name, end = budget_period(now, limits.budget_period)
        wait = 0.0 if end is None else _seconds(end - now)
        span = {"day": "today", "month": "this month", "total": "in total"}[limits.budget_period]
        message = (f"Budget exceeded: ${spend:.2f} spent {span}, against a budget of "
                   f"${limits.budget_usd:.2f}" + ("" if limits.budget_period == "total" else
                                                 f" per {limits.budget_period}") + ".")
    elif reason == "requests":
        wait = _until_free(*requests, elapsed, 1, rpm)
        message = (f"Rate limit reached: {rpm} requests per minute for this key. "
                   f"Retry in {math.ceil(wait)}s.")
    elif estimated_tokens > tpm:
        wait = 0.0
        message = (f"This request needs about {estimated_tokens} tokens, more than this key's "
                   f"limit of {tpm} tokens per minute.")
    else:
        wait = _until_free(*tokens, elapsed, estimated_tokens, tpm)
        message = (f"Rate limit reached: {tpm} tokens per minute for this key, and this request "
                   f"needs about {estimated_tokens}. Retry in {math.ceil(wait)}s.")
    return Admission(allowed=False, reason=reason, message=message, retry_after=wait,
                     headers=headers)


def _seconds(value: float) -> float:
    """Rounded to the microsecond, so float noise does not add a second when ceiled."""
    return round(value, 6)


def _touches_windows(limits: Limits) -> bool:
    return limits.requests_per_minute > 0 or limits.tokens_per_minute > 0


@implementer(ILimiter)
class MemoryLimiter:
    """Limits of one gateway process, in memory; idle keys are swept out every two minutes."""

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        # key id -> [window index, requests previous, current, tokens previous, current]
        self._windows: dict[str, list[int]] = {}
        # (key id, period name) -> [spend, end of the period or None]
        self._spend: dict[tuple[str, str], list] = {}
        self._next_sweep = clock.seconds() + 2 * WINDOW

    def _window(self, key_id: str, now: float) -> list[int]:
        index = window_index(now)
        state = self._windows.get(key_id)
        if state is None:
            state = self._windows[key_id] = [index, 0, 0, 0, 0]
        elif state[0] != index:
            if state[0] == index - 1:
                state[1], state[3] = state[2], state[4]
            else:
                state[1] = state[3] = 0
            state[0], state[2], state[4] = index, 0, 0
        return state

    def _sweep(self, now: float) -> None:
        if now < self._next_sweep:
            return
        self._next_sweep = now + 2 * WINDOW
        stale = window_index(now) - 1
        self._windows = {k: s for k, s in self._windows.items() if s[0] >= stale}
        self._spend = {k: s for k, s in self._spend.items() if s[1] is None or s[1] > now}

    def _period_spend(self, key_id: str, limits: Limits, now: float) -> list:
        name, end = budget_period(now, limits.budget_period)
        entry = self._spend.get((key_id, name))
        if entry is None:
            entry = self._spend[(key_id, name)] = [0.0, end]
        return entry

    def admit(self, key_id: str, limits: Limits, estimated_tokens: int) -> Deferred[Admission]:
        if not _touches_windows(limits) and limits.budget_usd <= 0:
            return succeed(ADMITTED)
        now = self._clock.seconds()
        self._sweep(now)
        spend = 0.0
        if limits.budget_usd > 0:
            entry = self._spend.get((key_id, budget_period(now, limits.budget_period)[0]))
            spend = entry[0] if entry else 0.0
        state = self._window(key_id, now) if _touches_windows(limits) else [0, 0, 0, 0, 0]
        elapsed = now - state[0] * WINDOW
        reason = refusal(limits, estimated_tokens, spend, (state[1], state[2]),
                         (state[3], state[4]), elapsed)
        if not reason:
            if limits.requests_per_minute > 0:
                state[2] += 1
            if limits.tokens_per_minute > 0:
                state[4] += estimated_tokens
        return succeed(admission(limits, now, estimated_tokens, reason, spend,
                                 (state[1], state[2]), (state[3], state[4])))

    def commit(self, key_id: str, limits: Limits, estimated_tokens: int, actual_tokens: int,
               cost_usd: float) -> Deferred[None]:
        now = self._clock.seconds()
        delta = actual_tokens - estimated_tokens
        if limits.tokens_per_minute > 0 and delta:
            state = self._window(key_id, now)
            state[3], state[4] = corrected(state[3], state[4], delta)
        if cost_usd > 0:
            self._period_spend(key_id, limits, now)[0] += cost_usd
        return succeed(None)

    def spent(self, key_id: str, limits: Limits) -> Deferred[float]:
        now = self._clock.seconds()
        entry = self._spend.get((key_id, budget_period(now, limits.budget_period)[0]))
        return succeed(entry[0] if entry else 0.0)

    def check(self) -> Deferred[bool]:
        return succeed(True)

    def close(self) -> Deferred[None]:
        return succeed(None)


_SCRIPTS = files("txgateway").joinpath("limits.lua").read_text("utf-8")


def _script(name: str) -> tuple[str, str]:
    """One entry point of limits.lua: its source (shared helpers first) and SHA1."""
    helpers, _, entries = _SCRIPTS.partition("-- @entry points\n")
    body = entries.split(f"-- @{name}\n", 1)[1].split("-- @", 1)[0]
    source = helpers + body
    return source, hashlib.sha1(source.encode()).hexdigest()


class LimiterUnavailable(Exception):
    """The Redis server did not answer in time."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@implementer(ILimiter)
class RedisLimiter:
    """
    Limits shared by every gateway process using one Redis server: each admit and commit is
    one Lua script, so concurrent processes see exact counts.

    Keys: ``{prefix}rate:{key id}`` (a hash of the two windows, expiring two minutes after its
    last use) and ``{prefix}spend:{key id}:{period}`` (period ``2025-01-31``, ``2025-01`` or
    ``total``; a day's or month's key expires when the period ends).

    ``clock`` stands in for the Redis server's clock, so tests can replay time; None uses
    ``TIME``.
    """

    _ADMIT = _script("admit")
    _COMMIT = _script("commit")
    _SPENT = _script("spent")

    def __init__(self, redis: Any, where: str, prefix: str, timeout: float,
                 reactor: IReactorTime, clock: IReactorTime | None = None) -> None:
        self._redis = redis
        self._where = where
        self._prefix = prefix
        self._timeout = timeout
        self._reactor = reactor
        self._clock = clock
        self._down = False
        self._connection_peek: Deferred | None = None
        self._connection_waiters: list[Deferred] = []

    @classmethod
    def from_url(cls, url: str, reactor: Any, clock: IReactorTime | None = None,
                 ) -> RedisLimiter:
        """``redis://[[user]:password@]host[:port][/db][?prefix=...&timeout=0.5&pool=4]``."""
        parts = urlsplit(url)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        unknown = set(query) - {"prefix", "timeout", "pool"}
        if unknown:
            raise ValueError(f"unknown limiter URL options: {', '.join(sorted(unknown))}")
        path = parts.path.strip("/")
        timeout = float(query.get("timeout", "0.5"))
        import txredisapi  # here: ~1 MiB in every process, and most configs use no Redis

        redis = txredisapi.lazyConnectionPool(
            host=parts.hostname or "127.0.0.1", port=parts.port or 6379,
            dbid=int(path) if path else None, poolsize=int(query.get("pool", "2")),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            connectTimeout=timeout, replyTimeout=timeout, convertNumbers=False)
        where = f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"
        return cls(redis, where, query.get("prefix", "txgateway:"), timeout, reactor, clock)

    # Talking to Redis

    def _connected(self) -> bool:
        # txredisapi queues commands while no connection is up, uncancellably: ask only when
        # one is.
        return self._redis._factory.size > 0

    def _wait_connected(self) -> Deferred[None]:
        """Fires when a connection is up, or fails with TimeoutError after the timeout."""
        waiter: Deferred[None] = Deferred(self._connection_waiters.remove)
        self._connection_waiters.append(waiter)
        if self._connection_peek is None:
            # One peek per outage: txredisapi cannot take a peek back, so it is never cancelled.
            self._connection_peek = self._redis._factory.connectionQueue.peek()
            self._connection_peek.addCallback(self._wake_waiters)
        return waiter.addTimeout(self._timeout, self._reactor)

    def _wake_waiters(self, connection: Any) -> None:
        self._connection_peek = None
        waiters, self._connection_waiters = self._connection_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    async def _run(self, script: tuple[str, str], keys: list[str], args: list[Any]) -> Any:
        if not self._connected():
            if self._down:
                raise LimiterUnavailable("no connection")
            await self._wait_connected()
        source, sha = script

        def unknown_script(failure: Any) -> Any:
            from txredisapi import ScriptDoesNotExist

            failure.trap(ScriptDoesNotExist)
            return self._redis.execute_command("EVAL", source, len(keys), *keys, *args)

        call = self._redis.evalsha(sha, keys, args).addErrback(unknown_script)
        return await call.addTimeout(self._timeout, self._reactor)

    def _now_argument(self) -> str:
        return "" if self._clock is None else repr(self._clock.seconds())

    def _outage(self, failure: BaseException) -> None:
        if not self._down:
            self._down = True
            _log.warn("Redis limiter at {where} unreachable ({error}); admitting requests "
                      "without limits until it answers", where=self._where, error=repr(failure))

    def _answered(self) -> None:
        if self._down:
            self._down = False
            _log.info("Redis limiter at {where} answers again", where=self._where)

    def _keys(self, key_id: str) -> list[str]:
        return [f"{self._prefix}rate:{key_id}", f"{self._prefix}spend:{key_id}:"]

    # ILimiter

    def admit(self, key_id: str, limits: Limits, estimated_tokens: int) -> Deferred[Admission]:
        if not _touches_windows(limits) and limits.budget_usd <= 0:
            return succeed(ADMITTED)
        return ensureDeferred(self._admit(key_id, limits, estimated_tokens))

    async def _admit(self, key_id: str, limits: Limits, estimated_tokens: int) -> Admission:
        args = [limits.requests_per_minute, limits.tokens_per_minute, estimated_tokens,
                repr(float(limits.budget_usd)), limits.budget_period, self._now_argument()]
        try:
            reply = await self._run(self._ADMIT, self._keys(key_id), args)
        except Exception as error:
            self._outage(error)
            return ADMITTED
        self._answered()
        reason, now, spend = _text(reply[0]), float(_text(reply[1])), float(_text(reply[6]))
        counts = [int(value) for value in reply[2:6]]
        return admission(limits, now, estimated_tokens, reason, spend,
                         (counts[0], counts[1]), (counts[2], counts[3]))

    def commit(self, key_id: str, limits: Limits, estimated_tokens: int, actual_tokens: int,
               cost_usd: float) -> Deferred[None]:
        delta = actual_tokens - estimated_tokens if limits.tokens_per_minute > 0 else 0
        if not delta and cost_usd <= 0:
            return succeed(None)
        return ensureDeferred(self._commit(key_id, limits, delta, cost_usd))

    async def _commit(self, key_id: str, limits: Limits, delta: int, cost_usd: float) -> None:
        args = [delta, repr(float(cost_usd)), limits.budget_period, self._now_argument()]
        try:
            await self._run(self._COMMIT, self._keys(key_id), args)
        except Exception as error:
            self._outage(error)
            return
        self._answered()

    def spent(self, key_id: str, limits: Limits) -> Deferred[float]:
        async def spent() -> float:
            args = [limits.budget_period, self._now_argument()]
            return float(_text(await self._run(self._SPENT, self._keys(key_id), args)))
        return ensureDeferred(spent())

    def check(self) -> Deferred[bool]:
        async def check() -> bool:
            try:
                if not self._connected():
                    await self._wait_connected()
                await self._redis.ping().addTimeout(self._timeout, self._reactor)
            except Exception:
                return False
            return True
        return ensureDeferred(check())

    def close(self) -> Deferred[None]:
        return self._redis.disconnect()

