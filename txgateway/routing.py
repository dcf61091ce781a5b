"""
Model routing: the model a caller names, to the providers and upstream models that serve it.

A route has one target or several.  Several are balanced by weight among those of the same
priority, and tried in turn when one fails (see `txgateway.web.runner`); a target that keeps
failing cools down, so calls stop waiting on it, and after the cooldown one call probes it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatchcase
from itertools import groupby

import attrs

from txgateway.config import ModelRoute, RouteTarget, RoutingSettings
from txgateway.providers import IProvider

DEFAULT_SETTINGS = RoutingSettings()


@attrs.frozen
class Target:
    """Where a call goes: a provider instance and the model name it knows."""

    provider: IProvider
    model: str


@attrs.define
class _Health:
    """A target's recent failures, and until when it cools down."""

    failures: int = 0
    cool_until: float = 0.0


@attrs.frozen
class _Choice:
    """A route target with its provider resolved; ``model`` None keeps the caller's name."""

    provider: IProvider
    model: str | None
    weight: float
    priority: int

    def target(self, asked: str) -> Target:
        return Target(self.provider, self.model or asked)


class Router:
    """
    Resolves model names: exact names first, then glob patterns (``gpt-4*``, ``*``) in
    config order.  A target without ``model`` sends the caller's name upstream unchanged.
    """

    #: How many failing targets are remembered at most.
    max_tracked = 10_000

    def __init__(self, routes: Sequence[ModelRoute], providers: Mapping[str, IProvider],
                 settings: RoutingSettings = DEFAULT_SETTINGS,
                 clock: Callable[[], float] = time.time,
                 shuffle: Callable[[list, list[float]], list] | None = None) -> None:
        self._exact: dict[str, tuple[_Choice, ...]] = {}
        self._patterns: list[tuple[str, tuple[_Choice, ...]]] = []
        self._settings = settings
        self._clock = clock
        self._shuffle = shuffle or _weighted_order
        self._health: dict[tuple[str, str], _Health] = {}
        for route in routes:
            choices = tuple(_choice(target, providers) for target in route.all_targets())
            choices = tuple(sorted(choices, key=lambda choice: choice.priority))
            if _is_pattern(route.name):
                self._patterns.append((route.name, choices))
            else:
                self._exact.setdefault(route.name, choices)

    def _choices(self, model: str) -> tuple[_Choice, ...] | None:
        choices = self._exact.get(model)
        if choices is not None:
            return choices
        for pattern, choices in self._patterns:
            if fnmatchcase(model, pattern):
                return choices
        return None

    def resolve(self, model: str) -> Target | None:
        """The first choice for ``model`` (what a realtime session or a listing uses)."""
        plan = self.plan(model)
        return plan[0] if plan else None

    def plan(self, model: str) -> list[Target] | None:
        """
        The targets to try for ``model``, in order: by priority, shuffled by weight within a
        priority, those cooling down last.  None when no route matches.
        """
        choices = self._choices(model)
        if choices is None:
            return None
        if len(choices) == 1:
            return [choices[0].target(model)]
        ordered: list[_Choice] = []
        for _, tier in groupby(choices, key=lambda choice: choice.priority):
            members = list(tier)
            ordered.extend(self._shuffle(members, [choice.weight for choice in members])
                           if len(members) > 1 else members)
        targets = [choice.target(model) for choice in ordered]
        if self._health:
            now = self._now()
            targets.sort(key=lambda target: self._cooling(target, now))
        return targets

    def listed(self) -> Mapping[str, Target]:
        """The models callers can name exactly (what ``GET /v1/models`` lists)."""
        return {name: choices[0].target(name) for name, choices in self._exact.items()}

    def failed(self, target: Target) -> None:
        """A call to ``target`` failed before its answer began: count it toward a cooldown."""
        key = _key(target)
        if key not in self._health and len(self._health) >= self.max_tracked:
            # A pattern route's targets carry the callers' own model names: forget the
            # oldest failing one rather than grow without bound.
            del self._health[next(iter(self._health))]
        health = self._health.setdefault(key, _Health())
        health.failures += 1
        if health.failures >= self._settings.failures_before_cooldown:
            health.cool_until = self._now() + self._settings.cooldown
            # After the cooldown one failure is enough to cool it down again.
            health.failures = self._settings.failures_before_cooldown - 1

    def succeeded(self, target: Target) -> None:
        if self._health:
            self._health.pop(_key(target), None)

    def cooling_down(self, target: Target) -> bool:
        return self._cooling(target, self._now())

    def _cooling(self, target: Target, now: float) -> bool:
        health = self._health.get(_key(target))
        return health is not None and health.cool_until > now

    def _now(self) -> float:
        return self._clock()


def _choice(target: RouteTarget, providers: Mapping[str, IProvider]) -> _Choice:
    return _Choice(providers[target.provider], target.model, target.weight, target.priority)


def _key(target: Target) -> tuple[str, str]:
    return (target.provider.name, target.model)


def _weighted_order(members: list, weights: list[float]) -> list:
    """``members`` in a random order where each comes first in proportion to its weight."""
    order = []
    members, weights = list(members), list(weights)
    while members:
        if not any(weights):
            order.extend(members)
            break
        index = random.choices(range(len(members)), weights)[0]
        order.append(members.pop(index))
        weights.pop(index)
    return order


def _is_pattern(name: str) -> bool:
    return any(character in name for character in "*?[")
