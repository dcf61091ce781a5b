"""The Anthropic Messages wire format, as callers speak it: request checks, errors, SSE."""

from __future__ import annotations

from typing import Any

import attrs
import orjson

from txgateway.dialects.openai import BadRequest, loads_object, parse_object, required_text
from txgateway.dialects.shapes import (
    WrongShape,
    boolean,
    integer,
    list_of,
    number,
    obj,
    one_of,
    string,
    typed,
)
from txgateway.streams import EventSplitter, data_of, event_name, events
from txgateway.usage import Usage

#: Anthropic's error ``type`` for each status it uses.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
#: The status for each Anthropic error type (what an OpenAI caller gets for it).
ERROR_STATUSES: dict[str | None, int] = {
    kind: status for status, kind in ERROR_TYPES.items() if status != 405}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error")


def error_body(status: int, message: str) -> bytes:
    return orjson.dumps({"type": "error",
                         "error": {"type": error_type(status), "message": message}})


def sse(name: str, data: dict[str, Any]) -> bytes:
    """One named event: the anthropic SDK dispatches on the ``event:`` line."""
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def stream_error_event(status: int, message: str) -> bytes:
    return b"event: error\ndata: " + error_body(status, message) + b"\n\n"


def is_error_body(body: bytes) -> bool:
    """Whether an upstream's error answer is already an Anthropic error object."""
    answer = loads_object(body)
    return (answer is not None and answer.get("type") == "error"
            and isinstance(answer.get("error"), dict))


def error_of(body: bytes) -> tuple[str, str] | None:
    """The (type, message) of an Anthropic error body, or None."""
    if not is_error_body(body):
        return None
    error = orjson.loads(body)["error"]
    return str(error.get("type", "api_error")), str(error.get("message", ""))


@attrs.frozen
class MessagesRequest:
    """A Messages request: the caller's bytes, parsed once."""

    raw: bytes
    parsed: dict[str, Any]
    model: str
    stream: bool


_TEXT = obj({"text": string}, required=("text",))
_IMAGE = obj({"source": obj({"type": string, "media_type": string, "data": string,
                             "url": string})})
_RESULT_CONTENT = one_of("Input should be a valid string or list", string,
                         list_of(typed({"text": _TEXT, "image": _IMAGE})))
_BLOCKS = list_of(typed({
    "text": _TEXT, "image": _IMAGE, "document": _IMAGE,
    "tool_use": obj({"id": string, "name": string, "input": obj()}),
    "tool_result": obj({"tool_use_id": string, "content": _RESULT_CONTENT,
                        "is_error": boolean}),
    "thinking": obj({"thinking": string, "signature": string}),
}))
#: What the translation to chat and the local token count read of a Messages request.
_MESSAGES_REQUEST = obj({
    "system": one_of("Input should be a valid string or list", string,
                     list_of(typed({"text": _TEXT}))),
    "messages": list_of(obj({"role": string, "content": one_of(
        "Input should be a valid string or list", string, _BLOCKS)},
        required=("role", "content"))),
    "stop_sequences": list_of(string),
    "temperature": number, "top_p": number, "top_k": integer,
    "tools": list_of(obj({"name": string, "description": string, "input_schema": obj()})),
    "tool_choice": obj({"type": string, "name": string, "disable_parallel_tool_use": boolean},
                       required=("type",)),
    "metadata": obj({"user_id": string}),
    "output_config": obj({"format": obj({"type": string, "schema": obj()}),
                          "effort": string}),
    "thinking": obj({"type": string, "budget_tokens": integer}, required=("type",)),
})


def parse_messages(raw: bytes, count_only: bool = False) -> MessagesRequest:
    """
    Check what the gateway routes, translates and counts on (types, the Messages API's
    words for a wrong one); the rest is the upstream's to judge.
    """
    parsed = parse_object(raw)
    model = required_text(parsed, "model", "model: Field required", None)
    if not isinstance(parsed.get("messages"), list):
        raise BadRequest("messages: Field required")
    max_tokens = parsed.get("max_tokens")
    if not count_only and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)):
        raise BadRequest("max_tokens: Field required" if max_tokens is None
                         else "max_tokens: Input should be a valid integer", "max_tokens")
    try:
        _MESSAGES_REQUEST(parsed, ())
    except WrongShape as wrong:
        raise BadRequest(f"{wrong.dotted()}: {wrong}", wrong.dotted()) from None
    stream = parsed.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("stream: Input should be a valid boolean")
    return MessagesRequest(raw=raw, parsed=parsed, model=model, stream=bool(stream))


def upstream_messages_body(request: MessagesRequest, upstream_model: str) -> bytes:
    """The caller's own bytes, unless the route renames the model."""
    if upstream_model == request.model:
        return request.raw
    return orjson.dumps({**request.parsed, "model": upstream_model})


class MessagesPassthrough:
    """
    The same-dialect stream: Anthropic's events go to the caller as they came (whole events,
    however the bytes were cut), with usage read on the side.  ``message_delta`` usage is
    cumulative, so each value seen replaces the last, field by field; never a sum.
    """

    def __init__(self) -> None:
        self._splitter = EventSplitter()
        self._usage: dict[str, Any] = {}
        self.usage: Usage | None = None
        self.error: tuple[int, str] | None = None
        self.chunks = 0
        #: Whether ``message_stop``, the stream's last event, went by.
        self.complete = False

    def feed(self, data: bytes) -> bytes:
        run = self._splitter.feed(data)
        self.chunks += run.count(b"content_block_delta")
        if run.startswith(b"event: message_stop") or b"\nevent: message_stop" in run:
            self.complete = True
        if b'"usage"' in run or b"event: error" in run or b"event:error" in run:
            for event in events(run):
                self._read(event)
        return run

    def _read(self, event: bytes) -> None:
        name = event_name(event)
        if name not in (b"message_start", b"message_delta", b"error"):
            return
        try:
            data = orjson.loads(data_of(event))
        except orjson.JSONDecodeError:
            return
        if name == b"error":
            error = data.get("error") or {}
            self.error = (ERROR_STATUSES.get(error.get("type"), 502),
                          str(error.get("message", "")))
            return
        if name == b"message_start":
            data = data.get("message") or {}
        usage = data.get("usage")
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if v is not None})
            self.usage = Usage.from_anthropic(self._usage)

    def finish(self) -> bytes:
        return self._splitter.pending
