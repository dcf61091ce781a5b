"""
The limiter: one table of cases run against the memory backend and against the real Redis at
127.0.0.1:6379 (which must be up: these tests fail without it), then what only Redis has to
show: key names and expiry, the server's clock, lost scripts, two processes sharing a key, and
an outage.
"""

from __future__ import annotations

import math
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from txgateway.limits import (
    Admission,
    ILimiter,
    Limits,
    MemoryLimiter,
    RedisLimiter,
    budget_period,
    format_duration,
    open_limiter,
)

REDIS = "redis://127.0.0.1:6379/0"

T0 = datetime(2025, 1, 31, 23, 59, tzinfo=UTC).timestamp()
"""A minute before a day's and a month's end, at the start of a rate window."""

RPM3 = Limits(requests_per_minute=3)
TPM1000 = Limits(tokens_per_minute=1000)
DAILY = Limits(budget_usd=1.0, budget_period="day")
MONTHLY = Limits(budget_usd=2.0, budget_period="month")
TOTAL = Limits(budget_usd=1.0, budget_period="total")


def admit(limits: Limits, estimate: int, key: str = "k", **expected: Any) -> tuple:
    return ("admit", key, limits, estimate, expected)


def commit(limits: Limits, estimate: int, actual: int, cost: float, key: str = "k") -> tuple:
    return ("commit", key, limits, estimate, actual, cost)


def advance(seconds: float) -> tuple:
    return ("advance", seconds)


def spent(limits: Limits, expected: float, key: str = "k") -> tuple:
    return ("spent", key, limits, expected)


def requests_headers(remaining: int, reset: str, limit: int = 3) -> dict[str, str]:
    return {"x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": reset}


def tokens_headers(remaining: int, reset: str, limit: int = 1000) -> dict[str, str]:
    return {"x-ratelimit-limit-tokens": str(limit),
            "x-ratelimit-remaining-tokens": str(remaining),
            "x-ratelimit-reset-tokens": reset}


CASES: dict[str, list[tuple]] = {
    "rpm_refusal_and_retry_after": [
        admit(RPM3, 0, allowed=True, headers=requests_headers(2, "2m0s")),
        admit(RPM3, 0, allowed=True, headers=requests_headers(1, "2m0s")),
        admit(RPM3, 0, allowed=True, headers=requests_headers(0, "2m0s")),
        # Next minute, 3 * (1 - e/60) + 1 <= 3 once e >= 20 s: 60 + 20 s from now.
        admit(RPM3, 0, allowed=False, reason="requests", retry_after=80.0,
              headers=requests_headers(0, "2m0s")),
        advance(79.5),
        admit(RPM3, 0, allowed=False, reason="requests", retry_after=0.5),
        # The refusals took nothing: had they, this would be refused too.
        advance(0.5),
        admit(RPM3, 0, allowed=True, headers=requests_headers(0, "1m40s")),
    ],
    "sliding_window_weighs_the_previous_minute": [
        *[admit(Limits(requests_per_minute=10), 0, allowed=True)] * 10,
        advance(90),  # half-way into the next minute: the 10 weigh 5
        *[admit(Limits(requests_per_minute=10), 0, allowed=True)] * 4,
        admit(Limits(requests_per_minute=10), 0, allowed=True,
              headers=requests_headers(0, "1m30s", limit=10)),
        admit(Limits(requests_per_minute=10), 0, allowed=False, reason="requests"),
    ],
    "tpm_estimate_then_commit_correction": [
        admit(TPM1000, 600, allowed=True, headers=tokens_headers(400, "2m0s")),
        admit(TPM1000, 600, allowed=False, reason="tokens", retry_after=80.0),
        advance(10),
        commit(TPM1000, 600, 100, 0.0),  # it used 100: 500 come back
        admit(TPM1000, 600, allowed=True, headers=tokens_headers(300, "1m50s")),
        commit(TPM1000, 600, 900, 0.0),  # it used 300 more than said
        admit(TPM1000, 1, allowed=False, reason="tokens"),
        # A refund larger than the window's use leaves nothing used, never less.
        commit(TPM1000, 5000, 0, 0.0),
        admit(TPM1000, 10, allowed=True, headers=tokens_headers(990, "1m50s")),
    ],
    "a_refusal_takes_nothing": [
        admit(TPM1000, 800, allowed=True),
        admit(TPM1000, 300, allowed=False, reason="tokens"),
        admit(TPM1000, 200, allowed=True, headers=tokens_headers(0, "2m0s")),
    ],
    "a_request_larger_than_the_limit_never_fits": [
        admit(TPM1000, 1001, allowed=False, reason="tokens", retry_after=0.0,
              headers=tokens_headers(1000, "0s")),
    ],
    "keys_are_apart": [
        *[admit(RPM3, 0, allowed=True)] * 3,
        admit(RPM3, 0, allowed=False),
        admit(RPM3, 0, key="other", allowed=True),
    ],
    "no_limits_admit_without_headers": [
        admit(Limits(), 10**9, allowed=True, headers={}),
        commit(Limits(), 0, 10, 0.25),
        spent(Limits(), 0.25),
    ],
    "daily_budget_renews_at_midnight_utc": [
        admit(DAILY, 0, allowed=True, headers={}),
        commit(DAILY, 0, 0, 0.75),
        admit(DAILY, 0, allowed=True),
        commit(DAILY, 0, 0, 0.5),
        spent(DAILY, 1.25),
        admit(DAILY, 0, allowed=False, reason="budget", retry_after=60.0,
              message="Budget exceeded: $1.25 spent today, against a budget of $1.00 per day."),
        advance(60),
        spent(DAILY, 0.0),
        admit(DAILY, 0, allowed=True),
    ],
    "monthly_budget_renews_on_the_first": [
        commit(MONTHLY, 0, 0, 2.0),
        admit(MONTHLY, 0, allowed=False, reason="budget", retry_after=60.0),
        advance(59),
        admit(MONTHLY, 0, allowed=False, reason="budget", retry_after=1.0),
        advance(1),
        admit(MONTHLY, 0, allowed=True),
        # A day's budget of the same key counts only today.
        spent(Limits(budget_period="day"), 0.0),
    ],
    "total_budget_never_renews": [
        commit(TOTAL, 0, 0, 0.5),
        commit(TOTAL, 0, 0, 0.5),
        admit(TOTAL, 0, allowed=False, reason="budget", retry_after=0.0,
              message="Budget exceeded: $1.00 spent in total, against a budget of $1.00."),
        advance(40 * 86400),
        spent(TOTAL, 1.0),
        admit(TOTAL, 0, allowed=False, reason="budget"),
    ],
    "budget_then_rates_together": [
        admit(Limits(requests_per_minute=1, budget_usd=1.0), 0, allowed=True),
        commit(Limits(requests_per_minute=1, budget_usd=1.0), 0, 0, 5.0),
        # Both refuse: the budget is checked first.
        admit(Limits(requests_per_minute=1, budget_usd=1.0), 0, allowed=False, reason="budget"),
    ],
}


class LimiterCases:
    """Runs every case of `CASES` as a test; a subclass makes ``self.limiter`` on ``self.clock``."""

    limiter: Any
    clock: Clock

    def test_interface(self) -> None:
        verifyObject(ILimiter, self.limiter)

    async def run_case(self, steps: list[tuple]) -> None:
        for number, step in enumerate(steps):
            kind, *args = step
            if kind == "advance":
                self.clock.advance(args[0])
            elif kind == "commit":
                await self.limiter.commit(*args)
            elif kind == "spent":
                key, limits, expected = args
                self.assertEqual(await self.limiter.spent(key, limits), expected, f"step {number}")
            else:
                key, limits, estimate, expected = args
                answer = await self.limiter.admit(key, limits, estimate)
                self.assertIsInstance(answer, Admission)
                got = {name: getattr(answer, name) for name in expected}
                self.assertEqual(got, expected, f"step {number}: {answer}")
                if not answer.allowed:
                    self.assertTrue(answer.message, f"step {number}")


for _name, _steps in CASES.items():
    def _test(self: Any, steps: list[tuple] = _steps) -> Any:
        return ensureDeferred(self.run_case(steps))
    _test.__name__ = f"test_{_name}"
    setattr(LimiterCases, _test.__name__, _test)


class MemoryLimiterTests(LimiterCases, TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(T0)
        self.limiter = MemoryLimiter(self.clock)

    def test_idle_keys_are_swept(self) -> None:
        self.limiter.admit("idle", RPM3, 0)
        self.limiter.commit("idle", DAILY, 0, 0, 0.5)
        self.limiter.commit("kept", TOTAL, 0, 0, 0.5)
        self.clock.advance(180)
        self.limiter.admit("busy", RPM3, 0)
        self.assertEqual(set(self.limiter._windows), {"busy"})
        self.assertEqual(set(self.limiter._spend), {("kept", "total")})


async def redis_connection() -> Any:
    return await txredisapi.Connection("127.0.0.1", 6379, reconnect=False,
                                       convertNumbers=False)


class RedisTestCase(TestCase):
    """A `RedisLimiter` on the real server, with a prefix of its own, cleaned after."""

    def setUp(self) -> Any:
        return ensureDeferred(self._set_up())

    async def _set_up(self) -> None:
        self.prefix = f"txgateway-test:{uuid.uuid4().hex}:"
        self.clock = Clock()
        self.clock.advance(T0)
        self.limiter = self.redis_limiter(clock=self.clock)
        if not await self.limiter.check():
            self.fail("Redis at 127.0.0.1:6379 does not answer: these tests need it")
        self.redis = await redis_connection()
        self.addCleanup(self.redis.disconnect)
        self.addCleanup(self._delete_keys)

    def redis_limiter(self, clock: Clock | None = None, timeout: float = 0.5) -> RedisLimiter:
        limiter = RedisLimiter.from_url(f"{REDIS}?prefix={self.prefix}&timeout={timeout}",
                                        reactor, clock=clock)
        self.addCleanup(limiter.close)
        return limiter

    async def _delete_keys(self) -> None:
        keys = await self.redis.keys(f"{self.prefix}*")
        if keys:
            await self.redis.delete(keys)


class RedisLimiterCaseTests(LimiterCases, RedisTestCase):
    pass


class RedisLimiterTests(RedisTestCase):
    async def test_key_names_and_expiry(self) -> None:
        await self.limiter.admit("k", RPM3, 0)
        self.assertEqual(int(await self.redis.ttl(f"{self.prefix}rate:k")), 120)
        for limits, name, ttl in ((DAILY, "2025-01-31", 60), (MONTHLY, "2025-01", 60),
                                  (TOTAL, "total", -1)):
            await self.limiter.commit("k", limits, 0, 0, 0.5)
            key = f"{self.prefix}spend:k:{name}"
            self.assertEqual(float(await self.redis.get(key)), 0.5, key)
            self.assertEqual(int(await self.redis.ttl(key)), ttl, key)

    async def test_periods_match_the_calendar(self) -> None:
        """The script's own calendar arithmetic names and ends periods as Python's does."""
        moments = [datetime(2024, 2, 29, 12, 30, 15, tzinfo=UTC),
                   datetime(2023, 2, 28, 23, 59, tzinfo=UTC),
                   datetime(2024, 12, 31, 23, 59, 59, 500000, tzinfo=UTC),
                   datetime(2000, 3, 1, tzinfo=UTC), datetime(2099, 12, 15, 6, tzinfo=UTC),
                   datetime(1999, 12, 31, 23, 0, tzinfo=UTC)]
        for number, moment in enumerate(moments):
            clock = Clock()
            clock.advance(moment.timestamp())
            limiter = self.redis_limiter(clock=clock)
            for period, form in (("day", "%Y-%m-%d"), ("month", "%Y-%m")):
                name, end = budget_period(clock.seconds(), period)
                self.assertEqual(name, moment.strftime(form))
                await limiter.commit(f"k{number}", Limits(budget_period=period), 0, 0, 1.0)
                key = f"{self.prefix}spend:k{number}:{name}"
                self.assertEqual(await self.redis.get(key), "1", key)
                ttl = math.ceil(end - clock.seconds())
                self.assertIn(int(await self.redis.ttl(key)), (ttl - 1, ttl), key)

    async def test_the_servers_clock_rules(self) -> None:
        limiter = self.redis_limiter()
        limits = Limits(requests_per_minute=2)
        answers = [await limiter.admit("k", limits, 0) for _ in range(3)]
        self.assertEqual([a.allowed for a in answers], [True, True, False])
        self.assertTrue(0 < answers[2].retry_after <= 120, answers[2])
        await limiter.commit("k", Limits(budget_usd=1.0), 0, 0, 0.5)
        month = datetime.fromtimestamp(time.time(), UTC).strftime("%Y-%m")
        self.assertEqual(await self.redis.get(f"{self.prefix}spend:k:{month}"), "0.5")
        self.assertEqual(await limiter.spent("k", Limits()), 0.5)

    async def test_a_flushed_script_is_sent_again(self) -> None:
        self.assertTrue((await self.limiter.admit("k", RPM3, 0)).allowed)
        await self.redis.script_flush()
        second = await self.limiter.admit("k", RPM3, 0)
        self.assertEqual(second.headers["x-ratelimit-remaining-requests"], "1")

    async def test_two_processes_admit_exactly_the_limit(self) -> None:
        # A roomy timeout: on a loaded machine a late reply would fail open (by design).
        first, second = self.redis_limiter(timeout=10), self.redis_limiter(timeout=10)
        self.assertTrue(await first.check() and await second.check())
        limits = Limits(requests_per_minute=25, tokens_per_minute=10**6)
        answers = await gatherResults(
            [limiter.admit("shared", limits, 10) for _ in range(40)
             for limiter in (first, second)])
        self.assertEqual(sum(a.allowed for a in answers), 25)
        self.assertEqual({a.reason for a in answers if not a.allowed}, {"requests"})


class RedisDownTests(TestCase):
    async def test_admits_open_without_hanging(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        limiter = open_limiter(f"redis://127.0.0.1:{port}/0?timeout=0.2", reactor)
        self.addCleanup(limiter.close)
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        started = reactor.seconds()
        answers = [await limiter.admit("k", RPM3, 0) for _ in range(3)]
        self.assertEqual([a.allowed for a in answers], [True] * 3)
        await limiter.commit("k", DAILY, 0, 0, 1.0)
        self.assertFalse(await limiter.check())
        self.assertLess(reactor.seconds() - started, 1.5)
        outages = [e for e in events if "unreachable" in e.get("log_format", "")]
        self.assertEqual(len(outages), 1, "one log line per outage")


class FormatTests(SynchronousTestCase):
    def test_durations_as_openai_writes_them(self) -> None:
        self.assertEqual([format_duration(s) for s in (0, 0.02, 1, 1.5, 59.25, 60, 90, 360)],
                         ["0s", "20ms", "1s", "1.5s", "59.25s", "1m0s", "1m30s", "6m0s"])

    def test_open_limiter_refuses_unknown_urls(self) -> None:
        self.assertRaises(ValueError, open_limiter, "mongodb://x", reactor)
        self.assertIsInstance(open_limiter("memory", Clock()), MemoryLimiter)
