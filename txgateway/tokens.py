"""
A local estimate of a Messages request's input tokens, for providers with no count endpoint.

It is the rule of thumb of `txgateway.usage.estimate_tokens` (four bytes of text per token)
applied to the text a model reads: system, message text, tool calls and results, and tool
definitions as JSON; plus Anthropic's documented upper cost of an image (about 1,600 tokens
for one of 1.15 megapixels) per image.  No tokenizer is involved, so it is an estimate: for
English prose it is usually within about 20 % of a real BPE count, and further off for code,
JSON and non-Latin scripts.
"""

from __future__ import annotations

from typing import Any

import orjson

from txgateway.usage import estimate_tokens

#: Anthropic's stated cost of an image at its largest size before downscaling.
IMAGE_TOKENS = 1600


def estimate_messages_tokens(request: dict[str, Any]) -> int:
    size = 0
    images = 0
    system = request.get("system")
    pieces: list[Any] = [system] if system else []
    for message in request.get("messages") or []:
        pieces.append(message.get("content"))
    while pieces:
        piece = pieces.pop()
        if isinstance(piece, str):
            size += len(piece.encode())
        elif isinstance(piece, list):
            pieces.extend(piece)
        elif isinstance(piece, dict):
            kind = piece.get("type")
            if kind in ("image", "document"):
                images += 1
            elif kind == "text":
                size += len(str(piece.get("text", "")).encode())
            elif kind == "tool_use":
                size += len(orjson.dumps(piece.get("input") or {}))
            elif kind == "tool_result":
                pieces.append(piece.get("content"))
    if request.get("tools"):
        size += len(orjson.dumps(request["tools"]))
    return estimate_tokens(size) + IMAGE_TOKENS * images
