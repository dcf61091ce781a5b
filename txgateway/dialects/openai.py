"""The OpenAI wire format, as callers speak it: request checks, error bodies, rewrites."""

from __future__ import annotations

from typing import Any, TypeGuard

import attrs
import orjson

from txgateway.dialects.shapes import deeper_than

#: The error ``type`` OpenAI uses for each status; the SDKs map the status, people read the type.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(
    status: int, message: str, code: str | None = None, param: str | None = None
) -> bytes:
    """An OpenAI error object; every key present, as the OpenAPI spec requires."""
    kind = ERROR_TYPES.get(status, "api_error")
    return orjson.dumps(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}
    )


def stream_error_event(status: int, message: str, code: str) -> bytes:
    """An SSE event carrying an error: the openai SDK raises ``APIError`` when it reads one."""
    return b"data: " + error_body(status, message, code) + b"\n\n"


class BadRequest(Exception):
    """The caller's request is malformed (400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@attrs.frozen
class ChatRequest:
    """
    A chat completions request (or a legacy completions one, routed and streamed the same
    way): the caller's bytes, parsed once.
    """

    raw: bytes
    parsed: dict[str, Any]
    model: str
    stream: bool
    #: The caller asked for the usage chunk at the end of a stream.
    wants_usage: bool


def parse_chat(raw: bytes) -> ChatRequest:
    """Check what the gateway routes on; everything else is the upstream's to judge."""
    parsed = parse_object(raw)
    model = model_of(parsed)
    if not isinstance(parsed.get("messages"), list):
        raise BadRequest("'messages' is a required property and must be an array", "messages")
    return _streamable(raw, parsed, model)


def parse_completion(raw: bytes) -> ChatRequest:
    """A legacy completions request: a prompt as a string, strings or token arrays."""
    parsed = parse_object(raw)
    model = model_of(parsed)
    prompt = parsed.get("prompt")
    if not (isinstance(prompt, str) or _is_list_of(prompt, str) or _is_list_of(prompt, int)
            or (_is_list_of(prompt, list) and all(_is_list_of(p, int) for p in prompt))):
        raise BadRequest("'prompt' must be a string, an array of strings or of token arrays",
                         "prompt")
    n = parsed.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise BadRequest("'n' must be a positive integer", "n")
    return _streamable(raw, parsed, model)


def model_of(parsed: dict[str, Any]) -> str:
    return required_text(parsed, "model", "you must provide a model parameter", "model")


def required_text(parsed: dict[str, Any], name: str, message: str,
                  param: str | None) -> str:
    """``parsed[name]`` when it is a non-empty string; else a 400 saying ``message``."""
    value = parsed.get(name)
    if not isinstance(value, str) or not value:
        raise BadRequest(message, param)
    return value


def _is_list_of(value: Any, kind: type) -> TypeGuard[list[Any]]:
    return (isinstance(value, list) and bool(value)
            and all(type(item) is kind for item in value))


def _streamable(raw: bytes, parsed: dict[str, Any], model: str) -> ChatRequest:
    stream = parsed.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", "stream")
    options = parsed.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("'stream_options' must be an object", "stream_options")
    return ChatRequest(
        raw=raw,
        parsed=parsed,
        model=model,
        stream=bool(stream),
        wants_usage=bool(options and options.get("include_usage") is True),
    )


#: How deep a body may nest lists and objects: orjson writes no more than 255 levels, and the
#: gateway writes bodies again (translated, stored), a few levels deeper.
MAX_DEPTH = 128


def parse_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise BadRequest("the request body is empty; expected a JSON object")
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"the request body is not valid JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise BadRequest("the request body must be a JSON object")
    # Counting brackets is cheap, and only a body with that many can nest that deep.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and deeper_than(parsed, MAX_DEPTH):
        raise BadRequest(f"the request body nests lists and objects more than {MAX_DEPTH} "
                         "levels deep")
    return parsed


def upstream_chat_body(chat: ChatRequest, upstream_model: str) -> bytes:
    """
    The body to send an OpenAI-compatible upstream: the caller's own bytes unless a field must
    change.  The upstream model name may differ, and a stream always asks for usage, so that
    every stream is counted.
    """
    changes: dict[str, Any] = {}
    if upstream_model != chat.model:
        changes["model"] = upstream_model
    if chat.stream and not chat.wants_usage:
        changes["stream_options"] = {**(chat.parsed.get("stream_options") or {}),
                                     "include_usage": True}
    if not changes:
        return chat.raw
    return orjson.dumps({**chat.parsed, **changes})


def loads_object(body: bytes | str) -> dict[str, Any] | None:
    """A JSON document that is an object, or None (malformed JSON, another value)."""
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def is_error_body(body: bytes) -> bool:
    """Whether an upstream's error answer is already an OpenAI error object."""
    answer = loads_object(body)
    return answer is not None and isinstance(answer.get("error"), dict)
