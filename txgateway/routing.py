"""Model routing: the model a caller names, to the provider and upstream model that serve it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

import attrs

from txgateway.config import ModelRoute
from txgateway.providers import IProvider


@attrs.frozen
class Target:
    """Where a call goes: a provider instance and the model name it knows."""

    provider: IProvider
    model: str


class Router:
    """
    Resolves model names: exact names first, then glob patterns (``gpt-4*``, ``*``) in
    config order.  A route without ``model`` sends the caller's name upstream unchanged.
    """

    def __init__(self, routes: Sequence[ModelRoute], providers: Mapping[str, IProvider]) -> None:
        self._exact: dict[str, Target] = {}
        self._patterns: list[tuple[ModelRoute, IProvider]] = []
        for route in routes:
            provider = providers[route.provider]
            if _is_pattern(route.name):
                self._patterns.append((route, provider))
            else:
                self._exact.setdefault(route.name, Target(provider, route.model or route.name))

    def resolve(self, model: str) -> Target | None:
        target = self._exact.get(model)
        if target is not None:
            return target
        for route, provider in self._patterns:
            if fnmatchcase(model, route.name):
                return Target(provider, route.model or model)
        return None

    def listed(self) -> Mapping[str, Target]:
        """The models callers can name exactly (what ``GET /v1/models`` lists)."""
        return self._exact


def _is_pattern(name: str) -> bool:
    return any(character in name for character in "*?[")
