"""Token usage of one call, read from what the provider reported."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Usage:
    """Tokens by kind.  ``estimated`` is true when no provider report was seen."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        """Read an OpenAI ``CompletionUsage`` object; None when it is absent or malformed."""
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if not isinstance(prompt, int) or not isinstance(completion, int):
            return None
        return cls(
            input_tokens=prompt,
            output_tokens=completion,
            cached_input_tokens=_detail(usage, "prompt_tokens_details", "cached_tokens"),
            reasoning_tokens=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
        )


def _detail(usage: dict, group: str, name: str) -> int:
    details = usage.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) else 0


def estimate_tokens(size_in_bytes: int) -> int:
    """The usual rule of thumb, four bytes of text per token, for when nothing better is known."""
    return (size_in_bytes + 3) // 4
