"""
The Anthropic provider's direction: an OpenAI chat completions request becomes a Messages
request, and the Messages answer (JSON or SSE) becomes a chat completion (JSON or chunks).
"""

from __future__ import annotations

from typing import Any

import orjson

from txgateway.dialects.anthropic import ERROR_STATUSES, error_of
from txgateway.dialects.openai import BadRequest, error_body, stream_error_event
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
from txgateway.translate import (
    ToChatChunks,
    arguments_object,
    assistant_choice,
    chat_completion_object,
    chat_text,
    content_parts,
    data_url,
    tool_call,
)
from txgateway.usage import Usage

#: Thinking budgets for OpenAI's ``reasoning_effort``; capped below ``max_tokens``.
THINKING_BUDGETS = {"minimal": 1024, "low": 1024, "medium": 2048, "high": 8192, "xhigh": 16384}
#: Anthropic's smallest thinking budget.
MIN_THINKING_BUDGET = 1024

FINISH_REASONS: dict[str | None, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


_CONTENT = one_of("expected a string or an array of content parts", string, list_of(typed({
    "text": obj({"text": string}),
    "image_url": obj({"image_url": obj({"url": string}, required=("url",))},
                     required=("image_url",))})))
_FUNCTION = obj({"name": string, "description": string, "parameters": obj()},
                required=("name",))
#: What the translation to Messages reads of a chat completions request.
_REQUEST = obj({
    "messages": list_of(obj({
        "role": string, "content": _CONTENT, "tool_call_id": string,
        "tool_calls": list_of(obj({"id": string, "function": obj(
            {"name": string, "arguments": string})}))})),
    "max_completion_tokens": integer, "max_tokens": integer,
    "stop": one_of("expected a string or an array of strings", string, list_of(string)),
    "temperature": number, "top_p": number, "parallel_tool_calls": boolean,
    "tools": list_of(typed({"function": obj({"function": _FUNCTION}, required=("function",))})),
    "tool_choice": one_of("expected a string or an object", string, obj(
        {"function": obj({"name": string}, required=("name",))}, required=("function",))),
    "response_format": obj({"type": string, "json_schema": obj({"schema": obj()})}),
    "reasoning_effort": string,
})


def messages_request(chat: dict[str, Any], model: str, default_max_tokens: int) -> dict[str, Any]:
    """
    The Messages request for a chat completions request (``model`` is the upstream's); a
    `BadRequest` naming the field when one it reads has the wrong type.
    """
    try:
        _REQUEST(chat, ())
    except WrongShape as wrong:
        raise BadRequest(f"Invalid type for '{wrong.param()}': {wrong}", wrong.param()) from None
    system, messages = _conversation(chat.get("messages") or [])
    request: dict[str, Any] = {"model": model, "messages": messages}
    if system:
        request["system"] = system
    max_tokens = chat.get("max_completion_tokens") or chat.get("max_tokens") or default_max_tokens
    request["max_tokens"] = max_tokens
    stop = chat.get("stop")
    if stop:
        request["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for name in ("temperature", "top_p"):
        if chat.get(name) is not None:
            request[name] = chat[name]
    if chat.get("stream"):
        request["stream"] = True
    if chat.get("tools"):
        request["tools"] = [_tool(tool) for tool in chat["tools"] if tool.get("type") == "function"]
    choice = _tool_choice(chat.get("tool_choice"), chat.get("parallel_tool_calls"))
    if choice is not None:
        request["tool_choice"] = choice
    if isinstance(chat.get("user"), str):
        request["metadata"] = {"user_id": chat["user"]}
    output_format = _output_format(chat.get("response_format"))
    if output_format is not None:
        request["output_config"] = {"format": output_format}
    budget = min(THINKING_BUDGETS.get(chat.get("reasoning_effort") or "", 0), max_tokens - 1)
    if budget >= MIN_THINKING_BUDGET:
        request["thinking"] = {"type": "enabled", "budget_tokens": budget}
    return request


def _conversation(chat_messages: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """System text, and the turns: tool results in user turns, consecutive ones merged."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in chat_messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            system.append(chat_text(content))
        elif role == "tool":
            result = {"type": "tool_result", "tool_use_id": message.get("tool_call_id"),
                      "content": content if isinstance(content, str) else _blocks(content)}
            if turns and turns[-1]["role"] == "user" and turns[-1].get("_tool_results"):
                turns[-1]["content"].append(result)
            else:
                turns.append({"role": "user", "content": [result], "_tool_results": True})
        elif role == "assistant":
            blocks = _blocks(content)
            for call in message.get("tool_calls") or []:
                function = call.get("function") or {}
                blocks.append({"type": "tool_use", "id": call.get("id"),
                               "name": function.get("name"),
                               "input": arguments_object(function.get("arguments"))})
            if blocks:
                turns.append({"role": "assistant", "content": blocks})
        else:
            turns.append({"role": "user", "content": _blocks(content)})
    for turn in turns:
        turn.pop("_tool_results", None)
    return "\n\n".join(text for text in system if text), turns


def _blocks(content: Any) -> list[dict[str, Any]]:
    """Chat content (a string or parts) as Messages content blocks."""
    blocks = []
    for part in content_parts(content):
        kind = part.get("type")
        if kind == "text":
            blocks.append({"type": "text", "text": part.get("text", "")})
        elif kind == "image_url":
            blocks.append({"type": "image", "source": _image_source(part["image_url"]["url"])})
    return blocks


def _image_source(url: str) -> dict[str, Any]:
    inline = data_url(url)
    if inline is not None:
        return {"type": "base64", "media_type": inline[0], "data": inline[1]}
    return {"type": "url", "url": url}


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    out = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    out["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if isinstance(choice, dict):
        result: dict[str, Any] = {"type": "tool", "name": choice["function"]["name"]}
    elif choice in ("auto", "none"):
        result = {"type": choice}
    elif choice == "required":
        result = {"type": "any"}
    elif parallel is False:
        result = {"type": "auto"}
    else:
        return None
    if parallel is False and result["type"] != "none":
        result["disable_parallel_tool_use"] = True
    return result


def _output_format(response_format: Any) -> dict[str, Any] | None:
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return {"type": "json_schema", "schema": schema}
    if response_format.get("type") == "json_object":
        return {"type": "json_schema",
                "schema": {"type": "object", "additionalProperties": True}}
    return None


def chat_completion(message: dict[str, Any], created: int) -> tuple[dict[str, Any], Usage | None]:
    """A chat completion for a Messages answer, and its usage."""
    text, reasoning, calls = [], [], []
    for block in message.get("content") or []:
        kind = block.get("type")
        if kind == "text":
            text.append(block.get("text", ""))
        elif kind == "thinking":
            reasoning.append(block.get("thinking", ""))
        elif kind == "tool_use":
            calls.append(tool_call(block.get("id"), block.get("name"), block.get("input")))
    choice = assistant_choice(0, "".join(text) if text else None, reasoning, calls,
                              FINISH_REASONS.get(message.get("stop_reason"), "stop"))
    usage = Usage.from_anthropic(message.get("usage"))
    return chat_completion_object(message.get("id"), created, message.get("model"), [choice],
                                  usage), usage


def openai_error(status: int, body: bytes) -> bytes | None:
    """An OpenAI error for an Anthropic one (same status, its type as the code), or None."""
    error = error_of(body)
    if error is None:
        return None
    kind, message = error
    return error_body(status, message, kind)


class MessagesToChatStream(ToChatChunks):
    """
    Turns a Messages SSE stream into chat completion chunks as it arrives.  Usage is
    cumulative in Anthropic's stream, so the latest values win over earlier ones, field by
    field.
    """

    def __init__(self, created: int, wants_usage: bool) -> None:
        super().__init__(created, wants_usage)
        self._splitter = EventSplitter()
        self._usage: dict[str, Any] = {}
        self._finish = "stop"

    def feed(self, data: bytes) -> bytes:
        out = []
        for event in events(self._splitter.feed(data)):
            payload = data_of(event)
            if not payload:
                continue
            out.extend(self._event(event_name(event), orjson.loads(payload)))
        self.chunks += len(out)
        return b"".join(out)

    def _event(self, name: bytes, data: dict[str, Any]) -> list[bytes]:
        kind = data.get("type") or name.decode()
        if kind == "message_start":
            message = data.get("message") or {}
            self._id, self._model = message.get("id", ""), message.get("model", "")
            self._take_usage(message.get("usage"))
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                return self._tool_start(data["index"], block.get("id"), block.get("name"))
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            return self._delta(data["index"], data.get("delta") or {})
        if kind == "content_block_stop":
            return self._block_stop(data.get("index"))
        if kind == "message_delta":
            self._finish = FINISH_REASONS.get((data.get("delta") or {}).get("stop_reason"),
                                              "stop")
            self._take_usage(data.get("usage"))
            return []
        if kind == "message_stop":
            return [self._chunk({}, self._finish), *self._done()]
        if kind == "error":
            error = data.get("error") or {}
            kind = error.get("type", "api_error")
            self.error = (ERROR_STATUSES.get(kind, 502), error.get("message", ""))
            return [stream_error_event(*self.error, kind)]
        return []

    def finish(self) -> bytes:
        """Nothing is held back: a stream without ``message_stop`` ends as it stands."""
        return b""

    def _delta(self, index: int, delta: dict[str, Any]) -> list[bytes]:
        kind = delta.get("type")
        if kind == "text_delta":
            return [self._chunk({"content": delta.get("text", "")})]
        if kind == "thinking_delta":
            return [self._chunk({"reasoning_content": delta.get("thinking", "")})]
        if kind == "input_json_delta" and delta.get("partial_json"):
            return self._arguments(index, delta["partial_json"])
        return []

    def _take_usage(self, usage: Any) -> None:
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if v is not None})
            self.usage = Usage.from_anthropic(self._usage)
