"""
The demo provider's legacy completions and embeddings: local, deterministic answers in
OpenAI's wire format, so that a fresh gateway shows these endpoints working with no key.

Embeddings are unit vectors drawn from the SHA-256 of the input (equal inputs, equal
vectors; ``dimensions`` honoured, 64 by default), sent as floats or base64 as asked.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Callable
from typing import Any

import orjson

from txgateway.dialects.openai import error_body
from txgateway.dialects.openai_rest import encode_embeddings_base64
from txgateway.providers.local import LocalAnswer

DEFAULT_DIMENSIONS = 64
Tokenizer = Callable[[str], list[str]]


def refusal(what: str) -> LocalAnswer:
    return LocalAnswer(400, b"application/json", [error_body(
        400, f"the demo provider expects {what}", "invalid_request")])


def completion(request: dict[str, Any], body: bytes, created: int, tokens: Tokenizer,
               reply: str | None, delay: float) -> LocalAnswer:
    prompts = request.get("prompt")
    if isinstance(prompts, str) or (isinstance(prompts, list) and prompts
                                    and isinstance(prompts[0], int)):
        prompts = [prompts]
    if not isinstance(prompts, list):
        return refusal("a completions request")
    n = max(int(request.get("n") or 1), 1)
    limit = request.get("max_tokens")
    limit = limit if isinstance(limit, int) and limit > 0 else 16  # OpenAI's default
    envelope = {"id": "cmpl-demo-" + hashlib.sha256(body).hexdigest()[:24],
                "object": "text_completion", "created": created,
                "model": request.get("model", "demo"), "system_fingerprint": "txgateway-demo"}
    choices = []  # (index, tokens, finish reason)
    for number, prompt in enumerate(prompts):
        said = prompt if isinstance(prompt, str) else f"{len(prompt)} tokens"
        answer = tokens(reply or f' The demo provider continues "{said[:80]}".')
        finish = "length" if len(answer) > limit else "stop"
        for copy in range(n):
            choices.append((number * n + copy, answer[:limit], finish))
    prompt_tokens = sum(len(tokens(p)) if isinstance(p, str) else len(p) for p in prompts)
    completion_tokens = sum(len(answer) for _, answer, _ in choices)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if not request.get("stream"):
        return LocalAnswer(200, b"application/json", [orjson.dumps({**envelope, "choices": [
            {"text": "".join(answer), "index": index, "logprobs": None, "finish_reason": finish}
            for index, answer, finish in choices], "usage": usage})])

    def event(chunk: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**envelope, **chunk}) + b"\n\n"

    events = []
    for index, answer, finish in choices:
        events += [event({"choices": [{"text": token, "index": index, "logprobs": None,
                                       "finish_reason": None}]}) for token in answer]
        events.append(event({"choices": [{"text": "", "index": index, "logprobs": None,
                                          "finish_reason": finish}]}))
    if (request.get("stream_options") or {}).get("include_usage"):
        events.append(event({"choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return LocalAnswer(200, b"text/event-stream", events, delay)


def embeddings(request: dict[str, Any], tokens: Tokenizer) -> LocalAnswer:
    inputs = request.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs
                                   and isinstance(inputs[0], int)):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        return refusal("an embeddings request")
    dimensions = request.get("dimensions") or DEFAULT_DIMENSIONS
    data = [{"object": "embedding", "index": index, "embedding": vector(item, dimensions)}
            for index, item in enumerate(inputs)]
    used = sum(len(tokens(item)) if isinstance(item, str) else len(item) for item in inputs)
    answer = {"object": "list", "data": data, "model": request.get("model", "demo"),
              "usage": {"prompt_tokens": used, "total_tokens": used}}
    if request.get("encoding_format") == "base64":
        answer = encode_embeddings_base64(answer)
    return LocalAnswer(200, b"application/json", [orjson.dumps(answer)])


def vector(item: Any, dimensions: int) -> list[float]:
    """A unit vector drawn from the input's SHA-256, float32-exact."""
    seed = orjson.dumps(item)
    stream = b"".join(hashlib.sha256(seed + b"%d" % block).digest()
                      for block in range((dimensions * 4 + 31) // 32))
    raw = [value / 2**31 - 1.0 for value in struct.unpack(f"<{dimensions}I",
                                                          stream[:dimensions * 4])]
    norm = math.sqrt(sum(value * value for value in raw)) or 1.0
    return [struct.unpack("<f", struct.pack("<f", value / norm))[0] for value in raw]
