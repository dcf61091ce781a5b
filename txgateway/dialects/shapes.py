"""
Type checks of request bodies, for the fields the gateway itself reads: a body that passes
can be translated without surprises; one that fails is a 400 that names the field, where a
wrong type would otherwise have reached a translator and become a 500.

Only types are checked, and only where the gateway looks: unknown fields, block types and
values stay the upstream's to judge.  A field given as ``null`` counts as absent unless the
shape says otherwise (``required``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

#: Checks a value at a path; raises `WrongShape`.
Shape = Callable[[Any, tuple[Any, ...]], None]


class WrongShape(ValueError):
    """A value of the wrong type at ``path`` (keys and list indexes from the body's root)."""

    def __init__(self, path: tuple[Any, ...], message: str) -> None:
        super().__init__(message)
        self.path = path

    def dotted(self) -> str:
        """The path as Anthropic writes it: ``messages.0.content.1.text``."""
        return ".".join(map(str, self.path))

    def param(self) -> str:
        """The path as OpenAI's ``param`` writes it: ``input[0].content[1].text``."""
        out = ""
        for key in self.path:
            out += f"[{key}]" if isinstance(key, int) else f".{key}" if out else str(key)
        return out


def _of(kinds: type | tuple[type, ...], message: str, truth: bool = False) -> Shape:
    """A scalar of ``kinds``; ``true``/``false`` only if ``truth`` (bool is an int here)."""

    def check(value: Any, path: tuple[Any, ...]) -> None:
        if not isinstance(value, kinds) or isinstance(value, bool) and not truth:
            raise WrongShape(path, message)

    return check


string = _of(str, "Input should be a valid string")
integer = _of(int, "Input should be a valid integer")
number = _of((int, float), "Input should be a valid number")
boolean = _of(bool, "Input should be a valid boolean", truth=True)


def one_of(message: str, *shapes: Shape) -> Shape:
    """Any one of ``shapes``; the first one's complaint when the value is of none's type."""

    def check(value: Any, path: tuple[Any, ...]) -> None:
        problems = []
        for shape in shapes:
            try:
                return shape(value, path)
            except WrongShape as problem:
                problems.append(problem)
        # A value of the right outer type is judged by that shape's own, deeper complaint.
        deepest = max(problems, key=lambda problem: len(problem.path))
        raise deepest if len(deepest.path) > len(path) else WrongShape(path, message)

    return check


def list_of(item: Shape) -> Shape:
    def check(value: Any, path: tuple[Any, ...]) -> None:
        if not isinstance(value, list):
            raise WrongShape(path, "Input should be a valid list")
        for index, element in enumerate(value):
            item(element, (*path, index))

    return check


def obj(fields: Mapping[str, Shape] | None = None, required: tuple[str, ...] = ()) -> Shape:
    """An object whose ``fields`` have those shapes when given; other keys pass."""
    fields = fields or {}

    def check(value: Any, path: tuple[Any, ...]) -> None:
        if not isinstance(value, dict):
            raise WrongShape(path, "Input should be a valid dictionary")
        for name in required:
            if value.get(name) is None:
                raise WrongShape((*path, name), "Field required")
        for name, shape in fields.items():
            if value.get(name) is not None:
                shape(value[name], (*path, name))

    return check


def typed(kinds: Mapping[str, Shape], default: str | None = None) -> Shape:
    """
    An object with a string ``type``, shaped as ``kinds`` says for that type; with a
    ``default``, the type may be left out.
    """
    head = obj({"type": string}, required=() if default else ("type",))

    def check(value: Any, path: tuple[Any, ...]) -> None:
        head(value, path)
        kind = value.get("type") or default
        shape = None if kind is None else kinds.get(kind)
        if shape is not None:
            shape(value, path)

    return check


def deeper_than(value: Any, limit: int) -> bool:
    """Whether a parsed JSON value nests lists and objects more than ``limit`` deep."""
    level: list[Any] = [value]
    for _ in range(limit):
        level = [child for node in level
                 for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
        if not level:
            return False
    return True
