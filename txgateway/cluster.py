"""
What the gateway shows as a whole, however many processes serve it.

`IGatewayView` is what the admin and metrics resources ask: the metrics, the realtime
sessions, a reload.  `LocalView` answers for one process.  Under ``--workers N`` each worker
asks the parent instead (`txgateway.workers`), which asks every worker and merges: metrics
summed series by series, sessions listed together, a reload done by all.

The commands below are the AMP protocol between a worker and the parent: the limiter's three
calls and the realtime sessions' seats (the parent holds the counters, so limits, budgets and
session caps are exact across workers), and the gathering ones each way.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, succeed
from twisted.protocols import amp
from zope.interface import Interface, implementer

from txgateway.config import ConfigError
from txgateway.limits import ADMITTED, Admission, ILimiter, Limits, _touches_windows
from txgateway.realtime.seats import GatewayFull, ISeats, TooManySessions

#: AMP caps one value at 65,535 bytes; `BigBytes` splits longer ones over several keys.
_CHUNK = 65_000


class BigBytes(amp.Argument):
    """Bytes of any length, as ``name.0``, ``name.1``... (metrics of many models pass 64 KB)."""

    def toBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        value = objects[name.decode()]
        for index, start in enumerate(range(0, max(len(value), 1), _CHUNK)):
            strings[b"%s.%d" % (name, index)] = value[start:start + _CHUNK]

    def fromBox(self, name: bytes, strings: dict, objects: dict, proto: Any) -> None:
        parts, index = [], 0
        while (key := b"%s.%d" % (name, index)) in strings:
            parts.append(strings[key])
            index += 1
        objects[name.decode()] = b"".join(parts)


_LIMITS = [(b"key_id", amp.Unicode()), (b"rpm", amp.Integer()), (b"tpm", amp.Integer()),
           (b"budget_usd", amp.Float()), (b"budget_period", amp.Unicode())]


def _limits_arguments(key_id: str, limits: Limits) -> dict[str, Any]:
    return {"key_id": key_id, "rpm": limits.requests_per_minute,
            "tpm": limits.tokens_per_minute, "budget_usd": float(limits.budget_usd),
            "budget_period": limits.budget_period}


def limits_of(rpm: int, tpm: int, budget_usd: float, budget_period: Any) -> Limits:
    return Limits(rpm, tpm, budget_usd, budget_period)


# Worker -> parent

class Admit(amp.Command):
    arguments = [*_LIMITS, (b"estimated_tokens", amp.Integer())]
    response = [(b"allowed", amp.Boolean()), (b"reason", amp.Unicode()),
                (b"message", amp.Unicode()), (b"retry_after", amp.Float()),
                (b"headers", BigBytes())]


class Commit(amp.Command):
    arguments = [*_LIMITS, (b"estimated_tokens", amp.Integer()),
                 (b"actual_tokens", amp.Integer()), (b"cost_usd", amp.Float())]


class Spent(amp.Command):
    arguments = _LIMITS
    response = [(b"spent", amp.Float())]


class TakeSeat(amp.Command):
    """A realtime session's seat, against the limits the worker's config sets."""

    arguments = [(b"session_id", amp.Unicode()), (b"key_id", amp.Unicode(optional=True)),
                 (b"max_sessions", amp.Integer()), (b"max_sessions_per_key", amp.Integer())]
    # The narrower first: AMP sends the first class a failure is an instance of.
    errors = {GatewayFull: b"GATEWAY_FULL", TooManySessions: b"TOO_MANY_SESSIONS"}


class ReleaseSeat(amp.Command):
    arguments = [(b"session_id", amp.Unicode())]
    requiresAnswer = False


class GatherMetrics(amp.Command):
    """Every worker's metrics, summed."""

    response = [(b"text", BigBytes())]


class GatherSessions(amp.Command):
    """Every worker's realtime sessions, as ``{"active": [...], "recent": [...]}``."""

    response = [(b"sessions", BigBytes())]


class ReloadAll(amp.Command):
    """Every worker reloads the config file; ``problems`` (JSON) is empty when all did."""

    response = [(b"problems", BigBytes())]


# Parent -> worker

class Scrape(amp.Command):
    response = [(b"text", BigBytes())]


class Sessions(amp.Command):
    response = [(b"sessions", BigBytes())]


class Reload(amp.Command):
    response = [(b"problems", BigBytes())]


class IGatewayView(Interface):
    """The gateway as a whole, for the admin and metrics resources."""

    def metrics() -> Deferred[bytes]:
        """The Prometheus text exposition of the whole gateway."""

    def sessions() -> Deferred[dict[str, list[dict[str, Any]]]]:
        """The realtime sessions, ``{"active": [...], "recent": [...]}`` as the admin API shows."""

    def reload() -> Deferred[list[str]]:
        """Reload the config everywhere; the problems of a refused config (empty: reloaded)."""


def scrape(gateway: Any) -> bytes:
    """This process's metrics."""
    gateway.metrics.ledger_pending(gateway.ledger.pending)
    return generate_latest(gateway.metrics.registry)


def sessions_of(gateway: Any) -> dict[str, list[dict[str, Any]]]:
    """This process's realtime sessions."""
    book = gateway.realtime
    return {"active": [session.as_json() for session in book.active()],
            "recent": [session.as_json() for session in book.recent()]}


def reload_here(gateway: Any) -> list[str]:
    try:
        gateway.reload_from_source()
    except ConfigError as error:
        return list(error.problems)
    return []


@implementer(IGatewayView)
class LocalView:
    """A gateway of one process."""

    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway

    def metrics(self) -> Deferred[bytes]:
        return succeed(scrape(self._gateway))

    def sessions(self) -> Deferred[dict[str, list[dict[str, Any]]]]:
        return succeed(sessions_of(self._gateway))

    def reload(self) -> Deferred[list[str]]:
        return succeed(reload_here(self._gateway))


@implementer(IGatewayView)
class ParentView:
    """A worker's view: the parent gathers it from every worker."""

    def __init__(self, parent: amp.AMP) -> None:
        self._parent = parent

    def metrics(self) -> Deferred[bytes]:
        return self._parent.callRemote(GatherMetrics).addCallback(lambda answer: answer["text"])

    def sessions(self) -> Deferred[dict[str, list[dict[str, Any]]]]:
        return self._parent.callRemote(GatherSessions).addCallback(
            lambda answer: orjson.loads(answer["sessions"]))

    def reload(self) -> Deferred[list[str]]:
        return self._parent.callRemote(ReloadAll).addCallback(
            lambda answer: orjson.loads(answer["problems"]))


@implementer(ILimiter)
class ParentLimiter:
    """
    A worker's `ILimiter` for ``limiter: memory``: the parent's `MemoryLimiter` decides, so
    every worker counts against the same windows and spend.  Keys without limits never ask.
    """

    def __init__(self, parent: amp.AMP) -> None:
        self._parent = parent

    def admit(self, key_id: str, limits: Limits, estimated_tokens: int) -> Deferred[Admission]:
        if not _touches_windows(limits) and limits.budget_usd <= 0:
            return succeed(ADMITTED)
        return self._parent.callRemote(
            Admit, estimated_tokens=estimated_tokens, **_limits_arguments(key_id, limits),
        ).addCallback(_admission)

    def commit(self, key_id: str, limits: Limits, estimated_tokens: int, actual_tokens: int,
               cost_usd: float) -> Deferred[None]:
        return self._parent.callRemote(
            Commit, estimated_tokens=estimated_tokens, actual_tokens=actual_tokens,
            cost_usd=float(cost_usd), **_limits_arguments(key_id, limits),
        ).addCallback(lambda _: None)

    def spent(self, key_id: str, limits: Limits) -> Deferred[float]:
        return self._parent.callRemote(Spent, **_limits_arguments(key_id, limits)).addCallback(
            lambda answer: answer["spent"])

    def check(self) -> Deferred[bool]:
        return succeed(self._parent.transport is not None)

    def close(self) -> Deferred[None]:
        return succeed(None)


@implementer(ISeats)
class ParentSeats:
    """A worker's seats: the parent counts every worker's realtime sessions."""

    def __init__(self, parent: amp.AMP) -> None:
        self._parent = parent

    def take(self, session_id: str, key_id: str | None, max_sessions: int,
             max_sessions_per_key: int) -> Deferred[None]:
        return self._parent.callRemote(
            TakeSeat, session_id=session_id, key_id=key_id, max_sessions=max_sessions,
            max_sessions_per_key=max_sessions_per_key).addCallback(lambda _: None)

    def release(self, session_id: str) -> None:
        self._parent.callRemote(ReleaseSeat, session_id=session_id)


def _admission(answer: dict[str, Any]) -> Admission:
    return Admission(allowed=answer["allowed"], reason=answer["reason"],
                     message=answer["message"], retry_after=answer["retry_after"],
                     headers=orjson.loads(answer["headers"]))


def admission_answer(admission: Admission) -> dict[str, Any]:
    """An `Admission` as `Admit`'s response."""
    return {"allowed": admission.allowed, "reason": admission.reason,
            "message": admission.message, "retry_after": float(admission.retry_after),
            "headers": orjson.dumps(dict(admission.headers))}


#: The kinds of series that only grow while a process lives (a dead worker's are kept).
_GROWING = frozenset({"counter", "histogram", "summary"})


def summed_metrics(texts: Iterable[bytes], growing_only: bool = False) -> bytes:
    """
    Prometheus expositions added up sample by sample (same name and labels): counters,
    histogram buckets and the gauges the gateway has (sessions open, records pending) all sum.
    ``growing_only`` keeps the counters, histograms and summaries alone (their ``_created``
    stamps aside): what a dead worker leaves to the sum.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            if growing_only and family.type not in _GROWING:
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            into = values[family.name]
            for sample in family.samples:
                if growing_only and sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                into[key] = into.get(key, 0.0) + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(list(families.values())))
    return generate_latest(registry)


class _Fixed:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def merged_sessions(answers: Iterable[dict[str, list[dict[str, Any]]]],
                    ) -> dict[str, list[dict[str, Any]]]:
    """
    Every worker's sessions in one list each, in the order one process gives them: active
    ones as they started, ended ones latest first.
    """
    active: list[dict[str, Any]] = []
    recent: list[dict[str, Any]] = []
    for answer in answers:
        active.extend(answer["active"])
        recent.extend(answer["recent"])
    active.sort(key=lambda session: session["started_at"])  # oldest first, newest last
    recent.sort(key=lambda session: session["ended_at"] or "", reverse=True)  # newest first
    return {"active": active, "recent": recent}
