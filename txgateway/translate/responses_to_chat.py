"""
The Responses API over chat completions, for providers that do not serve it themselves: a
Responses request becomes a chat request, and the chat answer (whole or streamed) becomes a
Responses object or its event sequence.
"""

from __future__ import annotations

import base64
import secrets
import time
from typing import Any

import orjson

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
from txgateway.translate import FromChatChunks
from txgateway.usage import Usage

#: What starts the ``encrypted_content`` of a compaction item the gateway made.
COMPACTION_TAG = "txgateway-compaction-v1:"
#: The last message of a compaction's chat request.
COMPACTION_PROMPT = (
    "Write a summary of the conversation so far, for yourself to continue it from later "
    "without the earlier messages: keep every fact, decision, name, number, instruction, "
    "tool result and open task that may matter; leave out pleasantries. Answer with the "
    "summary alone.")
#: How a compaction item's summary is put before the model.
COMPACTED = "The earlier part of this conversation was compacted into this summary:\n\n"
#: Why a chat answer stopped early, as a Responses ``incomplete_details.reason``.
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


class UntranslatableRequest(ValueError):
    """A Responses request with something chat completions cannot express (a 400)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


#: What every path (native too) reads of the input: items are stored, listed and resolved.
_INPUT = one_of("expected a string or an array of input items", string,
                list_of(obj({"type": string, "role": string, "id": string})))


def check_input(value: Any) -> None:
    """`WrongShape` for an ``input`` whose items the gateway could not store or list."""
    _INPUT(value, ("input",))


def input_items(value: Any) -> list[dict[str, Any]]:
    """The request's ``input`` as a list of items, a plain string as one user message."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": value}]}]
    return list(value or [])


def stored_items(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as the input_items endpoint lists them: typed, with ids and statuses."""
    listed = []
    for item in items:
        kind = item.get("type") or "message"
        if kind == "message":
            content = item.get("content")
            if isinstance(content, str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                content = [{"type": part, "text": content}]
            item = {**item, "type": "message", "content": content}
            item.setdefault("status", "completed")
        if not item.get("id"):
            item = {**item, "id": new_id({"message": "msg", "function_call": "fc",
                                          "function_call_output": "fco"}.get(kind, "item"))}
        listed.append(item)
    return listed


_TEXT = obj({"text": string})
_CONTENT = one_of("expected a string or an array of content parts", string, list_of(typed({
    "input_text": _TEXT, "output_text": _TEXT,
    "input_image": obj({"image_url": string, "detail": string})})))
#: What the translation to chat reads of a Responses request.
_REQUEST = obj({
    "input": one_of("expected a string or an array of input items", string, list_of(typed({
        "message": obj({"role": string, "content": _CONTENT}),
        "function_call": obj({"call_id": string, "name": string, "arguments": string}),
        "function_call_output": obj({"call_id": string, "output": _CONTENT}),
        "compaction": obj({"encrypted_content": string}),
    }, default="message"))),
    "temperature": number, "top_p": number, "parallel_tool_calls": boolean, "user": string,
    "max_output_tokens": integer,
    "tools": list_of(typed({"function": obj(
        {"name": string, "description": string, "parameters": obj(), "strict": boolean},
        required=("name",))})),
    "tool_choice": one_of("expected a string or an object", string,
                          obj({"type": string, "name": string})),
    "text": obj({"format": obj({"type": string, "name": string, "schema": obj(),
                                "strict": boolean, "description": string})}),
    "reasoning": obj({"effort": string}),
})


def chat_request(request: dict[str, Any], history: list[dict[str, Any]],
                 model: str) -> dict[str, Any]:
    """The chat completions request for a Responses ``request`` after ``history`` items."""
    try:
        _REQUEST(request, ())
    except WrongShape as wrong:
        raise UntranslatableRequest(f"Invalid type for '{wrong.param()}': {wrong}",
                                    wrong.param()) from None
    messages: list[dict[str, Any]] = []
    instructions = request.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    for item in [*history, *input_items(request.get("input"))]:
        _add_item(messages, item)
    chat: dict[str, Any] = {"model": model, "messages": messages}
    for name in ("temperature", "top_p", "parallel_tool_calls", "user"):
        if request.get(name) is not None:
            chat[name] = request[name]
    if request.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = request["max_output_tokens"]
    tools = [_tool(tool) for tool in request.get("tools") or []]
    if tools:
        chat["tools"] = tools
    choice = request.get("tool_choice")
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    response_format = _response_format((request.get("text") or {}).get("format"))
    if response_format is not None:
        chat["response_format"] = response_format
    effort = (request.get("reasoning") or {}).get("effort")
    if isinstance(effort, str):
        chat["reasoning_effort"] = effort
    if request.get("stream"):
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _add_item(messages: list[dict[str, Any]], item: Any) -> None:
    if not isinstance(item, dict):
        raise UntranslatableRequest("each input item must be an object", "input")
    reference = reference_of(item)
    if reference is not None:
        raise UntranslatableRequest(
            f"Item with id '{reference}' not found: this model's provider can only be sent "
            "references to items of the gateway's own conversations and stored responses",
            "input")
    kind = item.get("type") or "message"
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "system", "developer", "assistant"):
            raise UntranslatableRequest(f"unknown message role {role!r}", "input")
        if role == "assistant":
            messages.append({"role": "assistant", "content": _text(item.get("content"))})
        else:
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _parts(item.get("content"))})
    elif kind == "function_call":
        call = {"id": item.get("call_id"), "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments", "")}}
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        output = item.get("output")
        messages.append({"role": "tool", "tool_call_id": item.get("call_id"),
                         "content": output if isinstance(output, str) else _text(output)})
    elif kind == "compaction":
        messages.append({"role": "system", "content": COMPACTED + _summary_of(item)})
    elif kind != "reasoning":  # reasoning items carry nothing a chat model can take back
        raise UntranslatableRequest(
            f"input items of type {kind!r} are not supported for this model's provider",
            "input")


def compaction_request(request: dict[str, Any], history: list[dict[str, Any]],
                       model: str) -> dict[str, Any]:
    """The chat request that summarises a conversation, for ``/responses/compact``."""
    chat = chat_request({"instructions": request.get("instructions"),
                         "input": request.get("input")}, history, model)
    chat["messages"].append({"role": "user", "content": COMPACTION_PROMPT})
    return chat


def compacted_output(items: list[dict[str, Any]], summary: str) -> list[dict[str, Any]]:
    """
    A compaction's output as OpenAI's: the user messages, then one ``compaction`` item.  Its
    ``encrypted_content`` is the summary, base64 and tagged as the gateway's (not encrypted:
    the caller sent the conversation and may read what stands for it).
    """
    users = [item for item in stored_items(items)
             if item["type"] == "message" and item.get("role") == "user"]
    content = COMPACTION_TAG + base64.b64encode(summary.encode()).decode()
    return [*users, {"type": "compaction", "id": new_id("cmp"), "encrypted_content": content}]


def reference_of(item: Any) -> str | None:
    """The id an ``item_reference`` input item names (its ``type`` may be left out), or None."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return None
    kind = item.get("type")
    if kind == "item_reference" or (kind is None and item.keys() <= {"id", "type"}):
        return item["id"]
    return None


def own_compaction(item: Any) -> bool:
    """Whether ``item`` is a compaction item the gateway made (`compacted_output`)."""
    if not isinstance(item, dict) or item.get("type") != "compaction":
        return False
    content = item.get("encrypted_content")
    return isinstance(content, str) and content.startswith(COMPACTION_TAG)


def compaction_message(item: dict[str, Any]) -> dict[str, Any]:
    """
    What a compaction item the gateway made stands for, as a Responses input item: a provider
    that serves the Responses API itself cannot read the gateway's compaction items.
    """
    return {"type": "message", "role": "developer", "content": COMPACTED + _summary_of(item)}


def _summary_of(item: dict[str, Any]) -> str:
    content = item.get("encrypted_content")
    if not isinstance(content, str) or not content.startswith(COMPACTION_TAG):
        raise UntranslatableRequest(
            "this compaction item was made by another provider, whose encrypted content "
            "only it can read", "input")
    try:
        return base64.b64decode(content[len(COMPACTION_TAG):], validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise UntranslatableRequest("the compaction item's content is damaged",
                                    "input") from None


def _parts(content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        kind = part.get("type")
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": part.get("text") or ""})
        elif kind == "input_image" and part.get("image_url"):
            parts.append({"type": "image_url", "image_url": {
                "url": part["image_url"], "detail": part.get("detail") or "auto"}})
        else:
            raise UntranslatableRequest(
                f"content parts of type {kind!r} are not supported for this model's provider",
                "input")
    return parts


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join((part.get("text") or "") for part in content or [] if isinstance(part, dict))


def _tool(tool: Any) -> dict[str, Any]:
    if not isinstance(tool, dict) or tool.get("type") != "function":
        kind = tool.get("type") if isinstance(tool, dict) else tool
        raise UntranslatableRequest(
            f"tools of type {kind!r} are not supported for this model's provider", "tools")
    function = {"name": tool.get("name"), "parameters": tool.get("parameters") or {}}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


def _response_format(text_format: Any) -> dict[str, Any] | None:
    if not isinstance(text_format, dict):
        return None
    if text_format.get("type") == "json_schema":
        schema = {name: text_format[name] for name in ("name", "schema", "strict", "description")
                  if text_format.get(name) is not None}
        return {"type": "json_schema", "json_schema": schema}
    if text_format.get("type") == "json_object":
        return {"type": "json_object"}
    return None


def responses_usage(usage: Usage | None) -> dict[str, Any]:
    """A ``ResponseUsage``; the openai SDK's types require both input details."""
    usage = usage or Usage()
    return {"input_tokens": usage.input_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_input_tokens,
                                     "cache_write_tokens": usage.cache_creation_tokens},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.input_tokens + usage.output_tokens}


def response_object(request: dict[str, Any], response_id: str, model: str,
                    created_at: int, status: str, output: list[dict[str, Any]],
                    usage: dict[str, Any] | None, incomplete: str | None = None
                    ) -> dict[str, Any]:
    """A Responses ``Response``, echoing the request's settings as OpenAI does."""
    return {
        "id": response_id, "object": "response", "created_at": created_at,
        "status": status, "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "model": model, "output": output,
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": request.get("reasoning") or {"effort": None, "summary": None},
        "store": request.get("store", True),
        "temperature": request.get("temperature"),
        "text": request.get("text") or {"format": {"type": "text"}},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": request.get("tools") or [],
        "top_p": request.get("top_p"),
        "truncation": request.get("truncation", "disabled"),
        "usage": usage,
        "metadata": request.get("metadata") or {},
        "conversation": conversation_reference(request.get("conversation")),
    }


def conversation_reference(value: Any) -> dict[str, Any] | None:
    """A request's ``conversation`` (an id, or an object with one) as a Response shows it."""
    if isinstance(value, dict):
        value = value.get("id")
    return {"id": value} if isinstance(value, str) and value else None


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [] if status == "in_progress" else [_output_text(text)]}


def _output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call_item(item_id: str, call_id: Any, name: Any, arguments: str,
                       status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def response_from_chat(request: dict[str, Any], completion: dict[str, Any], response_id: str,
                       model: str) -> tuple[dict[str, Any], Usage | None]:
    """A chat completion (OpenAI's format) as a Responses object, and its usage."""
    usage = Usage.from_openai(completion.get("usage"))
    [choice, *_] = completion["choices"]
    message = choice.get("message") or {}
    output = []
    if message.get("content"):
        output.append(message_item(new_id("msg"), message["content"]))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        output.append(function_call_item(new_id("fc"), call.get("id"), function.get("name"),
                                         function.get("arguments") or ""))
    incomplete = INCOMPLETE_REASONS.get(choice.get("finish_reason"))
    return response_object(
        request, response_id, completion.get("model") or model,
        int(completion.get("created") or time.time()),
        "incomplete" if incomplete else "completed", output, responses_usage(usage),
        incomplete), usage


def sse(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class ChatToResponsesStream(FromChatChunks):
    """
    Turns chat completion chunks into the Responses event sequence as they arrive: text and
    each tool call are output items opened when they start and closed when the next one
    starts or the stream ends; ``response.completed`` waits for the usage chunk (the gateway
    always asks for it) or the end.  ``response`` is the final object once it ended.
    """

    def __init__(self, request: dict[str, Any], response_id: str, model: str) -> None:
        super().__init__()
        self._request = request
        self._id = response_id
        self._model = model
        self._created = int(time.time())
        self._sequence = 0
        self._output: list[dict[str, Any]] = []
        self._open: Any = None
        self._text: list[str] = []
        self._tools: dict[int, dict[str, Any]] = {}
        self._finish: str | None = None
        self._started = False
        self.response: dict[str, Any] | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        event = sse({"type": kind, "sequence_number": self._sequence, **fields})
        self._sequence += 1
        return event

    def _snapshot(self, status: str, usage: dict[str, Any] | None = None,
                  incomplete: str | None = None) -> dict[str, Any]:
        return response_object(self._request, self._id, self._model, self._created, status,
                               list(self._output), usage, incomplete)

    def _start(self) -> list[bytes]:
        self._started = True
        return [self._event("response.created", response=self._snapshot("in_progress")),
                self._event("response.in_progress", response=self._snapshot("in_progress"))]

    def error_event(self, status: int, message: str, code: str) -> bytes:
        """The ``error`` event that ends a stream broken under it, numbered next in it."""
        return self._event("error", code=code, message=message, param=None)

    def _error(self, error: dict[str, Any]) -> list[bytes]:
        self.error = (500, str(error.get("message", "")))
        self._finish = "error"
        return [self._event("error", code=error.get("code"), message=self.error[1],
                            param=error.get("param"))]

    def _begin(self, chunk: dict[str, Any]) -> list[bytes]:
        return [] if self._started else self._start()

    def _choice(self, delta: dict[str, Any], finish_reason: str | None) -> list[bytes]:
        out = []
        if delta.get("content"):
            out += self._text_delta(delta["content"])
        for call in delta.get("tool_calls") or []:
            out += self._tool_delta(call)
        if finish_reason:
            self._finish = finish_reason
        return out

    def _text_delta(self, text: str) -> list[bytes]:
        out = []
        if self._open != "text":
            out += self._close()
            self._open = "text"
            self._text = []
            item = message_item(new_id("msg"), "", "in_progress")
            self._output.append(item)
            index = len(self._output) - 1
            out.append(self._event("response.output_item.added", output_index=index, item=item))
            out.append(self._event("response.content_part.added", item_id=item["id"],
                                   output_index=index, content_index=0,
                                   part=_output_text("")))
        self._text.append(text)
        out.append(self._event("response.output_text.delta", item_id=self._output[-1]["id"],
                               output_index=len(self._output) - 1, content_index=0,
                               delta=text, logprobs=[]))
        return out

    def _tool_delta(self, call: dict[str, Any]) -> list[bytes]:
        out = []
        index = call.get("index", 0)
        function = call.get("function") or {}
        if index not in self._tools:
            out += self._close()
            item = function_call_item(new_id("fc"), call.get("id"), function.get("name"), "",
                                      "in_progress")
            self._tools[index] = item
            self._open = ("tool", index)
            self._output.append(item)
            out.append(self._event("response.output_item.added",
                                   output_index=len(self._output) - 1, item=dict(item)))
        item = self._tools[index]
        if function.get("arguments"):
            item["arguments"] += function["arguments"]
            out.append(self._event("response.function_call_arguments.delta",
                                   item_id=item["id"], output_index=self._output.index(item),
                                   delta=function["arguments"]))
        return out

    def _close(self) -> list[bytes]:
        """The events that complete the open output item, if one is."""
        if self._open is None:
            return []
        index = len(self._output) - 1
        if self._open == "text":
            text = "".join(self._text)
            item = message_item(self._output[index]["id"], text)
            self._output[index] = item
            out = [self._event("response.output_text.done", item_id=item["id"],
                               output_index=index, content_index=0, text=text, logprobs=[]),
                   self._event("response.content_part.done", item_id=item["id"],
                               output_index=index, content_index=0, part=_output_text(text))]
        else:
            item = self._output[index]
            item["status"] = "completed"
            out = [self._event("response.function_call_arguments.done", item_id=item["id"],
                               output_index=index, name=item["name"],
                               arguments=item["arguments"])]
        self._open = None
        out.append(self._event("response.output_item.done", output_index=index,
                               item=dict(item)))
        return out

    def _end(self) -> list[bytes]:
        if not self._started or self.response is not None or self._finish == "error":
            return []
        out = self._close()
        incomplete = INCOMPLETE_REASONS.get(self._finish or "")
        status = "incomplete" if incomplete else "completed"
        self.response = self._snapshot(status, responses_usage(self.usage), incomplete)
        out.append(self._event(f"response.{status}", response=self.response))
        return out
