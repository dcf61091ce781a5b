"""
The Messages dialect's direction: a caller's Messages request becomes an OpenAI chat
completions request for any provider, and the chat answer (JSON or chunks) becomes a Message
(JSON or SSE with the ``event:`` lines the anthropic SDK dispatches on).
"""

from __future__ import annotations

from typing import Any

import orjson

from txgateway.dialects.anthropic import sse
from txgateway.dialects.anthropic import stream_error_event as anthropic_error_event
from txgateway.translate import FromChatChunks, arguments_object
from txgateway.usage import Usage

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                "function_call": "tool_use", "content_filter": "refusal"}


def chat_request(messages: dict[str, Any], model: str) -> dict[str, Any]:
    """The chat completions request for a Messages request (``model`` is the upstream's)."""
    chat: dict[str, Any] = {"model": model, "messages": _conversation(messages)}
    chat["max_completion_tokens"] = messages["max_tokens"]
    if messages.get("stop_sequences"):
        chat["stop"] = messages["stop_sequences"]
    for name in ("temperature", "top_p"):
        if messages.get(name) is not None:
            chat[name] = messages[name]
    if messages.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    tools = [_tool(tool) for tool in messages.get("tools") or [] if "input_schema" in tool]
    if tools:
        chat["tools"] = tools
    choice = messages.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        chat["tool_choice"] = ({"type": "function", "function": {"name": choice.get("name")}}
                               if kind == "tool" else "required" if kind == "any" else kind)
        if choice.get("disable_parallel_tool_use"):
            chat["parallel_tool_calls"] = False
    user = (messages.get("metadata") or {}).get("user_id")
    if isinstance(user, str):
        chat["user"] = user
    config = messages.get("output_config") or {}
    if isinstance(config.get("format"), dict) and config["format"].get("type") == "json_schema":
        chat["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "structured_output", "schema": config["format"].get("schema")}}
    effort = config.get("effort") or _effort(messages.get("thinking"))
    if effort:
        chat["reasoning_effort"] = effort
    return chat


def _effort(thinking: Any) -> str | None:
    """A thinking budget as the nearest OpenAI ``reasoning_effort``."""
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    budget = thinking.get("budget_tokens") or 0
    return "low" if budget <= 1024 else "medium" if budget <= 4096 else "high"


def _conversation(messages: dict[str, Any]) -> list[dict[str, Any]]:
    chat: list[dict[str, Any]] = []
    system = messages.get("system")
    if system:
        chat.append({"role": "system", "content": _text(system)})
    for message in messages.get("messages") or []:
        content = message.get("content")
        if message.get("role") == "assistant":
            chat.append(_assistant(content))
            continue
        if isinstance(content, str):
            chat.append({"role": "user", "content": content})
            continue
        parts = []
        for block in content or []:
            kind = block.get("type")
            if kind == "tool_result":
                chat.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                             "content": _text(block.get("content") or "")})
            elif kind == "text":
                parts.append({"type": "text", "text": block.get("text", "")})
            elif kind == "image":
                parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
        if parts:
            chat.append({"role": "user", "content": parts})
    return chat


def _assistant(content: Any) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    text, calls = [], []
    for block in content or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function", "function": {
                "name": block.get("name"),
                "arguments": orjson.dumps(block.get("input") or {}).decode()}})
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(block.get("text", "") for block in content
                     if isinstance(block, dict) and block.get("type") == "text")


def _image_url(block: dict[str, Any]) -> str:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    return source.get("url", "")


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = {"name": tool.get("name"), "parameters": tool["input_schema"]}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def messages_usage(usage: Usage) -> dict[str, Any]:
    """Anthropic's usage: ``input_tokens`` leaves out cache reads and writes."""
    return {
        "input_tokens": usage.input_tokens - usage.cached_input_tokens
        - usage.cache_creation_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "cache_creation_input_tokens": usage.cache_creation_tokens,
    }


def message(completion: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
    """A Message for a chat completion's first choice, and its usage."""
    choice = (completion.get("choices") or [{}])[0]
    answer = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    reasoning = answer.get("reasoning_content") or answer.get("reasoning")
    if reasoning:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if answer.get("content"):
        content.append({"type": "text", "text": answer["content"]})
    for call in answer.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                        "input": arguments_object(function.get("arguments"))})
    usage = Usage.from_openai(completion.get("usage"))
    return {
        "id": _message_id(completion.get("id")), "type": "message", "role": "assistant",
        "model": completion.get("model"), "content": content,
        "stop_reason": STOP_REASONS.get(choice.get("finish_reason"), "end_turn"),
        "stop_sequence": None,
        "usage": messages_usage(usage or Usage()),
    }, usage


def _message_id(chat_id: Any) -> str:
    return "msg_" + str(chat_id or "").removeprefix("chatcmpl-")


class ChatToMessagesStream(FromChatChunks):
    """
    Turns chat completion chunks into the Messages event sequence as they arrive.

    Each run of text, reasoning or one tool call's arguments is a content block; the final
    ``message_delta`` waits for the usage chunk (the gateway always asks for it) or the end,
    so it carries the input tokens too.
    """

    def __init__(self, model: str) -> None:
        super().__init__()
        self._model = model
        self._started = False
        self._ended = False
        self._block = -1
        self._open: Any = None
        self._tools: dict[int, int] = {}
        self._stop = "end_turn"

    def _error(self, error: dict[str, Any]) -> list[bytes]:
        status = 529 if error.get("type") == "overloaded_error" else 500
        self.error = (status, str(error.get("message", "")))
        self._ended = True
        return [anthropic_error_event(status, self.error[1])]

    def _begin(self, chunk: dict[str, Any]) -> list[bytes]:
        if self._started:
            return []
        self._started = True
        return [sse("message_start", {"type": "message_start", "message": {
            "id": _message_id(chunk.get("id")), "type": "message", "role": "assistant",
            "model": chunk.get("model") or self._model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}})]

    def _choice(self, delta: dict[str, Any], finish_reason: str | None) -> list[bytes]:
        out = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if reasoning:
            out += self._to_block("thinking", {"type": "thinking", "thinking": "",
                                               "signature": ""})
            out.append(self._delta({"type": "thinking_delta", "thinking": reasoning}))
        if delta.get("content"):
            out += self._to_block("text", {"type": "text", "text": ""})
            out.append(self._delta({"type": "text_delta", "text": delta["content"]}))
        for call in delta.get("tool_calls") or []:
            out += self._tool_call(call)
        if finish_reason:
            self._stop = STOP_REASONS.get(finish_reason, "end_turn")
        return out

    def _tool_call(self, call: dict[str, Any]) -> list[bytes]:
        out = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self._tools:
            out += self._to_block(("tool", index), {
                "type": "tool_use", "id": call.get("id"), "name": function.get("name"),
                "input": {}})
            self._tools[index] = self._block
        if function.get("arguments"):
            out.append(self._delta({"type": "input_json_delta",
                                    "partial_json": function["arguments"]},
                                   self._tools[index]))
        return out

    def _to_block(self, key: Any, block: dict[str, Any]) -> list[bytes]:
        if self._open == key:
            return []
        out = self._close()
        self._block += 1
        self._open = key
        out.append(sse("content_block_start", {"type": "content_block_start",
                                               "index": self._block, "content_block": block}))
        return out

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        self._open = None
        return [sse("content_block_stop", {"type": "content_block_stop",
                                           "index": self._block})]

    def _delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta",
                                           "index": self._block if index is None else index,
                                           "delta": delta})

    def _end(self) -> list[bytes]:
        if self._ended or not self._started:
            return []
        self._ended = True
        return [*self._close(),
                sse("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": self._stop,
                                                "stop_sequence": None},
                                      "usage": messages_usage(self.usage or Usage())}),
                sse("message_stop", {"type": "message_stop"})]
