"""
The OpenAI wire format of the stateless REST APIs beside chat: embeddings, images and speech
requests, and the usage objects their answers carry.
"""

from __future__ import annotations

import base64
import sys
from array import array
from typing import Any

import attrs
import orjson

from txgateway.dialects.openai import BadRequest, model_of, parse_object, required_text
from txgateway.usage import Usage

#: Each API family's path under an OpenAI-style ``/v1`` (OpenAI's, Azure's, compatible
#: servers'); for files and batches, the collection's, an object's path being under it.
OPENAI_PATHS = {"chat": "/chat/completions", "completions": "/completions",
                "embeddings": "/embeddings", "images": "/images/generations",
                "image_edits": "/images/edits", "speech": "/audio/speech",
                "transcriptions": "/audio/transcriptions",
                "translations": "/audio/translations", "responses": "/responses",
                "files": "/files", "batches": "/batches"}

ENCODING_FORMATS = ("float", "base64")


@attrs.frozen
class RestRequest:
    """A JSON request of one of these APIs: the caller's bytes, parsed once."""

    raw: bytes
    parsed: dict[str, Any]
    model: str
    stream: bool = False

    def upstream_body(self, upstream_model: str) -> bytes:
        """The caller's own bytes, unless the route renames the model."""
        if upstream_model == self.model:
            return self.raw
        return orjson.dumps({**self.parsed, "model": upstream_model})


def parse_embeddings(raw: bytes) -> RestRequest:
    parsed = parse_object(raw)
    model = model_of(parsed)
    given = parsed.get("input")
    if not _is_input(given):
        raise BadRequest("'input' must be a non-empty string, array of strings, token array or "
                         "array of token arrays", "input")
    encoding = parsed.get("encoding_format", "float")
    if encoding not in ENCODING_FORMATS:
        raise BadRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
    dimensions = parsed.get("dimensions")
    if dimensions is not None and not _positive_int(dimensions):
        raise BadRequest("'dimensions' must be a positive integer", "dimensions")
    return RestRequest(raw, parsed, model)


def parse_image_generation(raw: bytes) -> RestRequest:
    parsed = parse_object(raw)
    # dall-e-2 is OpenAI's default when no model is named; the gateway routes on a name.
    model = model_of(parsed)
    required_text(parsed, "prompt", "'prompt' is a required string", "prompt")
    n = parsed.get("n")
    if n is not None and not _positive_int(n):
        raise BadRequest("'n' must be a positive integer", "n")
    return RestRequest(raw, parsed, model, _stream_flag(parsed))


def parse_speech(raw: bytes) -> RestRequest:
    parsed = parse_object(raw)
    model = model_of(parsed)
    for field in ("input", "voice"):
        if field not in parsed:
            raise BadRequest(f"'{field}' is a required property", field)
    return RestRequest(raw, parsed, model, parsed.get("stream_format") == "sse")


def _stream_flag(parsed: dict[str, Any]) -> bool:
    stream = parsed.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    return bool(stream)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_input(value: Any) -> bool:
    if isinstance(value, str):
        return True
    if not isinstance(value, list) or not value:
        return False
    kinds = {type(item) for item in value}
    if kinds == {str} or kinds == {int}:
        return True
    return kinds == {list} and all(
        item and all(type(token) is int for token in item) for item in value)


def usage_of(usage: Any) -> Usage | None:
    """
    Any usage object these APIs report, as a `Usage`; None when absent or unreadable:
    chat and completions (``prompt_tokens``, ``completion_tokens``), embeddings
    (``prompt_tokens`` alone), images, speech and token-billed transcription
    (``input_tokens``, ``output_tokens``), duration-billed transcription (``seconds``), and
    Anthropic's (cache reads and writes beside ``input_tokens``).
    """
    if not isinstance(usage, dict):
        return None
    if "completion_tokens" in usage:
        return Usage.from_openai(usage)
    prompt = usage.get("prompt_tokens")
    if isinstance(prompt, int):
        return Usage(input_tokens=prompt)
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        return Usage(audio_seconds=float(seconds)) if isinstance(seconds, int | float) else None
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        return Usage.from_anthropic(usage)
    given, made = usage.get("input_tokens"), usage.get("output_tokens", 0)
    if not isinstance(given, int) or not isinstance(made, int):
        return None
    # Images and responses say input_tokens_details, transcriptions input_token_details.
    details = usage.get("input_tokens_details") or usage.get("input_token_details")
    if not isinstance(details, dict):
        details = {}
    cached, audio = details.get("cached_tokens"), details.get("audio_tokens")
    return Usage(input_tokens=given, output_tokens=made,
                 cached_input_tokens=cached if isinstance(cached, int) else 0,
                 input_audio_tokens=audio if isinstance(audio, int) else 0)


def image_usage(answer: Any) -> Usage | None:
    """An images answer's usage (gpt-image models report tokens), with the images counted."""
    if not isinstance(answer, dict):
        return None
    data = answer.get("data")
    images = len(data) if isinstance(data, list) else 0
    usage = usage_of(answer.get("usage"))
    if usage is None:
        return Usage(images=images) if images else None
    return attrs.evolve(usage, images=images)


def encode_embeddings_base64(answer: dict[str, Any]) -> dict[str, Any]:
    """
    ``answer`` (an OpenAI embeddings list with float vectors) with each vector as OpenAI
    sends it for ``encoding_format: base64``: little-endian float32, base64-encoded.
    """
    data = []
    for item in answer.get("data", []):
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vector, list):
            packed = array("f", vector)
            if sys.byteorder != "little":
                packed.byteswap()
            item = {**item, "embedding": base64.b64encode(packed.tobytes()).decode("ascii")}
        data.append(item)
    return {**answer, "data": data}
