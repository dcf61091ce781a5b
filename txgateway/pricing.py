"""
Model prices and what a call cost.

The shipped list is ``prices.json`` beside this module (its source and date are at its top);
the config's ``prices:`` section adds models or replaces a shipped model's price whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from importlib.resources import files
from types import MappingProxyType

import attrs

from txgateway.usage import Usage

_PER_TOKEN = 1e-6
#: Bedrock's cross-region inference profiles cost what the model costs.
_REGION_PROFILES = ("us.", "eu.", "apac.", "jp.", "au.", "ca.", "us-gov.", "global.")
_GLOB = frozenset("*?[")


@attrs.frozen
class ModelPrice:
    """
    USD per million tokens unless said otherwise.  A price left at 0 for a kind of token means
    that kind costs what its plain kind costs (cached input costs ``input``, audio output
    costs ``output``, ...): 0 means "not priced apart", never "free".
    """

    input: float = 0.0
    #: Cache reads.
    cached_input: float = 0.0
    #: Cache writes (Anthropic's 5-minute cache, for one).
    cache_write: float = 0.0
    output: float = 0.0
    audio_input: float = 0.0
    audio_output: float = 0.0
    #: Cached audio input of realtime models; 0: as ``cached_input``.
    cached_audio_input: float = 0.0
    #: Image input of realtime models.
    image_input: float = 0.0
    #: USD per generated image, counted when the call reports no tokens (DALL-E reports none;
    #: gpt-image-1 reports tokens, which are then what is billed).
    per_image: float = 0.0
    #: USD per second of transcribed audio (whisper-1), translated audio, or a Live session.
    per_second: float = 0.0
    #: USD per second of a Live session's paused (standby) time; 0: as ``per_second``.
    paused_per_second: float = 0.0
    #: USD per search unit (rerank).
    per_search: float = 0.0


def _load_shipped() -> Mapping[str, ModelPrice]:
    document = json.loads(files("txgateway").joinpath("prices.json").read_text("utf-8"))
    return MappingProxyType({name: ModelPrice(**fields)
                             for name, fields in document["prices"].items()})


SHIPPED_PRICES: Mapping[str, ModelPrice] = _load_shipped()


class PriceTable:
    """Prices by model name, found for dated and regional variants of the names listed."""

    _CACHE_SIZE = 4096
    _CACHED_LENGTH = 256

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._names = {name: price for name, price in prices.items() if not _GLOB & set(name)}
        # The longest pattern is the most specific.
        self._globs = sorted(((name, price) for name, price in prices.items()
                              if _GLOB & set(name)), key=lambda item: -len(item[0]))
        self._found: dict[str, ModelPrice | None] = {}
        self._longest = max(map(len, self._names), default=0)

    def price(self, model: str) -> ModelPrice | None:
        """
        The price of the name itself, else of the longest listed name it starts with, cut at a
        ``-`` or ``@`` (``gpt-4o-2024-08-06`` costs as ``gpt-4o``, ``claude-sonnet-4@20250514``
        as ``claude-sonnet-4``), else of the longest glob it matches; None when unknown.
        """
        try:
            return self._found[model]
        except KeyError:
            pass
        found = self._look_up(model)
        if len(model) <= self._CACHED_LENGTH:  # a made-up name may be a body's size
            if len(self._found) >= self._CACHE_SIZE:
                self._found.clear()
            self._found[model] = found
        return found

    def _look_up(self, model: str) -> ModelPrice | None:
        names = [model] + [model[len(profile):] for profile in _REGION_PROFILES
                           if model.startswith(profile)]
        for name in names:
            price = self._names.get(name)
            if price is not None:
                return price
            # No listed name is longer than `_longest`: a caller's made-up name costs no more.
            for end in range(min(len(name) - 1, self._longest), 0, -1):
                if name[end] in "-@" and name[:end] in self._names:
                    return self._names[name[:end]]
        for pattern, price in self._globs:
            if fnmatchcase(model, pattern):
                return price
        return None

    def cost(self, model: str, usage: Usage) -> float | None:
        """
        USD for one call; None when the model is unknown.  ``input_tokens`` holds every prompt
        token, cache reads and writes and audio among them; ``output_tokens`` holds audio out.
        """
        price = self.price(model)
        if price is None:
            return None
        cached, written = usage.cached_input_tokens, usage.cache_creation_tokens
        audio_in, audio_out = usage.input_audio_tokens, usage.output_audio_tokens
        fresh = max(0, usage.input_tokens - cached - written - audio_in)
        tokens = (fresh * price.input
                  + cached * (price.cached_input or price.input)
                  + written * (price.cache_write or price.input)
                  + audio_in * (price.audio_input or price.input)
                  + max(0, usage.output_tokens - audio_out) * price.output
                  + audio_out * (price.audio_output or price.output))
        cost = tokens * _PER_TOKEN
        if usage.images and not usage.input_tokens and not usage.output_tokens:
            cost += usage.images * price.per_image
        return (cost + usage.audio_seconds * price.per_second
                + usage.search_units * price.per_search)

    def realtime_cost(self, model: str, input_text: int, input_audio: int, input_image: int,
                      cached_text: int, cached_audio: int, output_text: int,
                      output_audio: int) -> float | None:
        """
        USD for a realtime session's tokens, by modality; the cached counts are parts of the
        input counts, as in ``response.done``'s usage.  None when the model is unknown.
        """
        price = self.price(model)
        if price is None:
            return None
        cached_input = price.cached_input or price.input
        tokens = (max(0, input_text - cached_text) * price.input
                  + cached_text * cached_input
                  + max(0, input_audio - cached_audio) * (price.audio_input or price.input)
                  + cached_audio * (price.cached_audio_input or cached_input)
                  + input_image * (price.image_input or price.input)
                  + output_text * price.output
                  + output_audio * (price.audio_output or price.output))
        return tokens * _PER_TOKEN

    def transcription_cost(self, model: str, tokens: int, seconds: float,
                           output_tokens: int = 0) -> float | None:
        """
        USD for a transcription: by the second for models priced so (whisper-1), else
        ``tokens`` of audio input and ``output_tokens`` of text; None when the model is unknown.
        """
        price = self.price(model)
        if price is None:
            return None
        if price.per_second and seconds > 0:
            return seconds * price.per_second
        return (tokens * (price.audio_input or price.input)
                + output_tokens * price.output) * _PER_TOKEN


def shipped_table(overrides: Mapping[str, ModelPrice] = MappingProxyType({})) -> PriceTable:
    """The shipped prices with the config's over them."""
    return PriceTable({**SHIPPED_PRICES, **overrides})
