"""Token usage of one call, read from what the provider reported."""

from __future__ import annotations

from typing import Any

import attrs


@attrs.frozen
class Usage:
    """
    Tokens by kind.  ``estimated`` is true when some count is not from a provider's report
    (none was seen, or the stream was cut short after a partial one).

    ``input_tokens`` counts every prompt token, as OpenAI's ``prompt_tokens`` does: cache reads
    (``cached_input_tokens``) and cache writes (``cache_creation_tokens``) are parts of it.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False
    #: Audio tokens, parts of ``input_tokens`` and ``output_tokens`` (audio-capable models).
    input_audio_tokens: int = 0
    output_audio_tokens: int = 0
    #: Images generated (image APIs), for per-image prices.
    images: int = 0
    #: Seconds of audio billed by duration (whisper's ``usage: {type: "duration"}``).
    audio_seconds: float = 0.0
    #: Search units billed (Cohere's rerank: one per query of up to 100 documents).
    search_units: int = 0

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
            cache_creation_tokens=_detail(usage, "prompt_tokens_details", "cache_write_tokens"),
            reasoning_tokens=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
            input_audio_tokens=_detail(usage, "prompt_tokens_details", "audio_tokens"),
            output_audio_tokens=_detail(usage, "completion_tokens_details", "audio_tokens"),
        )

    @classmethod
    def from_responses(cls, usage: Any) -> Usage | None:
        """Read a Responses API ``ResponseUsage`` object; None when absent or malformed."""
        if not isinstance(usage, dict):
            return None
        prompt = usage.get("input_tokens")
        output = usage.get("output_tokens")
        if not isinstance(prompt, int) or not isinstance(output, int):
            return None
        return cls(
            input_tokens=prompt,
            output_tokens=output,
            cached_input_tokens=_detail(usage, "input_tokens_details", "cached_tokens"),
            cache_creation_tokens=_detail(usage, "input_tokens_details", "cache_write_tokens"),
            reasoning_tokens=_detail(usage, "output_tokens_details", "reasoning_tokens"),
        )

    @classmethod
    def from_anthropic(cls, usage: Any) -> Usage | None:
        """
        Read an Anthropic ``Usage`` object, whose ``input_tokens`` excludes cache reads and
        writes; None when it is absent or malformed.
        """
        if not isinstance(usage, dict):
            return None
        fresh = usage.get("input_tokens")
        output = usage.get("output_tokens")
        if not isinstance(fresh, int) or not isinstance(output, int):
            return None
        read = _count(usage.get("cache_read_input_tokens"))
        written = _count(usage.get("cache_creation_input_tokens"))
        return cls(
            input_tokens=fresh + read + written,
            output_tokens=output,
            cached_input_tokens=read,
            cache_creation_tokens=written,
            reasoning_tokens=_detail(usage, "output_tokens_details", "thinking_tokens"),
        )


def _count(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _detail(usage: dict, group: str, name: str) -> int:
    details = usage.get(group)
    value = details.get(name) if isinstance(details, dict) else None
    return value if isinstance(value, int) else 0


def estimate_tokens(size_in_bytes: int) -> int:
    """The usual rule of thumb, four bytes of text per token, for when nothing better is known."""
    return (size_in_bytes + 3) // 4
