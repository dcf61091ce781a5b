"""Translations between API dialects, through one internal shape: OpenAI chat completions."""

from typing import Any

import orjson
from zope.interface import Attribute, Interface

from txgateway.dialects.openai import loads_object
from txgateway.streams import EventSplitter, data_of, events
from txgateway.upstream import UpstreamError
from txgateway.usage import Usage


class Untranslatable(UpstreamError):
    """
    A request asks for what the provider cannot be given (an image by URL to Bedrock, token
    arrays to Gemini's embeddings): the caller's mistake, a 400, before any call is made.
    """

    status = 400
    code = "unsupported_by_provider"


def data_url(url: str) -> tuple[str, str] | None:
    """``(media type, base64 data)`` of a ``data:...;base64,`` URL; None for any other URL."""
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return media_type, data
    return None


def chat_text(content: Any) -> str:
    """The text of chat content (a string or parts), for dialects that take only text there."""
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content or []
                     if isinstance(part, dict) and part.get("type") == "text")


def content_parts(content: Any) -> list[dict[str, Any]]:
    """Chat content's parts: a string is one text part, an empty one none."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content or []


class ITurnWords(Interface):
    """
    How a provider whose turns must alternate (Converse, Gemini) words each piece of a chat
    conversation, for `alternating_turns`.
    """

    key = Attribute("What holds a turn's items: 'content' or 'parts'.")
    model_role = Attribute("The role of the model's turns: 'assistant' or 'model'.")

    def system(content: Any) -> list[dict[str, Any]]:  # noqa: N805
        """The system items for a system or developer message's content."""

    def content(content: Any) -> list[dict[str, Any]]:  # noqa: N805
        """The items for chat content (a string or parts)."""

    def tool_call(call: dict[str, Any]) -> dict[str, Any]:  # noqa: N805
        """The item for one of an assistant message's tool calls."""

    def tool_result(message: dict[str, Any]) -> dict[str, Any]:  # noqa: N805
        """The item for a tool message."""


def alternating_turns(messages: list[Any], words: ITurnWords,
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """
    The system items, and the turns of chat ``messages``: tool results in user turns, and
    consecutive turns of one role merged, as Converse and Gemini want them.
    """
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(words.system(message.get("content")))
            continue
        if role == "assistant":
            role, items = words.model_role, words.content(message.get("content"))
            items.extend(words.tool_call(call) for call in message.get("tool_calls") or [])
        elif role == "tool":
            role, items = "user", [words.tool_result(message)]
        else:
            role, items = "user", words.content(message.get("content"))
        if not items:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1][words.key].extend(items)
        else:
            turns.append({"role": role, words.key: items})
    return system, turns


def arguments_object(arguments: Any) -> dict[str, Any]:
    """
    A tool call's JSON arguments as an object, which the other dialects require; ``{}`` for
    none, malformed JSON or a non-object.
    """
    return (loads_object(arguments) if arguments else None) or {}


def tool_call(call_id: Any, name: Any, arguments: Any) -> dict[str, Any]:
    """An OpenAI tool call for another dialect's, whose arguments are an object, not JSON text."""
    return {"id": call_id, "type": "function", "function": {
        "name": name, "arguments": orjson.dumps(arguments or {}).decode()}}


def assistant_choice(index: int, content: str | None, reasoning: list[str],
                     calls: list[dict[str, Any]], finish: str) -> dict[str, Any]:
    """A chat completion's choice: the answer's text, its reasoning and its tool calls."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if calls:
        message["tool_calls"] = calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish}


def chat_usage(usage: Usage) -> dict[str, Any]:
    """An OpenAI usage object: ``prompt_tokens`` counts cache reads and writes too."""
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens,
                                  "cache_write_tokens": usage.cache_creation_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def chat_completion_object(completion_id: Any, created: int, model: Any,
                           choices: list[dict[str, Any]], usage: Usage | None) -> dict[str, Any]:
    """A chat completion, with its usage when the answer reported one."""
    completion: dict[str, Any] = {"id": completion_id, "object": "chat.completion",
                                  "created": created, "model": model, "choices": choices}
    if usage is not None:
        completion["usage"] = chat_usage(usage)
    return completion


class ToChatChunks:
    """
    The base of stream translators that write an OpenAI chat chunk stream: `_chunk` makes a
    chunk of the completion ``_id``, `_done` the usage chunk (when the caller asked for it)
    and ``[DONE]``.  For dialects that stream a tool call as a content block of argument
    fragments (Converse, Messages), `_tool_start`, `_arguments` and `_block_stop` keep each
    call's ``index`` stable (its order among tool calls).  ``usage``, ``error`` and ``chunks``
    are read as it goes.
    """

    def __init__(self, created: int, wants_usage: bool, model: str = "") -> None:
        self._created = created
        self._wants_usage = wants_usage
        self._id = ""
        self._model = model
        #: Tool call index by content block index.
        self._tools: dict[int, int] = {}
        #: Tool calls (by block index) whose arguments have not started yet.
        self._no_arguments: set[int] = set()
        self.usage: Usage | None = None
        #: An error the upstream sent, or met in its stream: (status, message).
        self.error: tuple[int, str] | None = None
        self.chunks = 0
        #: Whether ``[DONE]`` was written: the caller had the whole answer.
        self.complete = False

    def _sse(self, fields: dict[str, Any]) -> bytes:
        chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                 "model": self._model, **fields}
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, index: int = 0) -> bytes:
        return self._sse({"choices": [{"index": index, "delta": delta, "logprobs": None,
                                       "finish_reason": finish}]})

    def _done(self) -> list[bytes]:
        out = []
        if self._wants_usage and self.usage is not None:
            out.append(self._sse({"choices": [], "usage": chat_usage(self.usage)}))
        out.append(b"data: [DONE]\n\n")
        self.complete = True
        return out

    def _tool_start(self, block: int, call_id: Any, name: Any) -> list[bytes]:
        """The first chunk of a tool call: its id and name."""
        index = self._tools[block] = len(self._tools)
        self._no_arguments.add(block)
        return [self._chunk({"tool_calls": [{
            "index": index, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": ""}}]})]

    def _arguments(self, block: int, fragment: str) -> list[bytes]:
        self._no_arguments.discard(block)
        return [self._chunk({"tool_calls": [{"index": self._tools.get(block, 0),
                                             "function": {"arguments": fragment}}]})]

    def _block_stop(self, block: Any) -> list[bytes]:
        """A call without arguments still gets valid JSON ones."""
        return self._arguments(block, "{}") if block in self._no_arguments else []


class FromChatChunks:
    """
    The base of stream translators that read an OpenAI chat chunk stream and write another
    dialect's events: it splits the SSE, keeps each chunk's usage, and hands each chunk to
    `_begin` then its first choice to `_choice`, an error object to `_error`, and ``[DONE]``
    (or `finish`, for a stream cut short) to `_end`; each returns the events to write.
    ``usage``, ``error`` and ``chunks`` are read as it goes.
    """

    def __init__(self) -> None:
        self._splitter = EventSplitter()
        self.usage: Usage | None = None
        self.error: tuple[int, str] | None = None
        self.chunks = 0
        #: Whether ``[DONE]`` came, and with it the caller's last events.
        self.complete = False

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in events(self._splitter.feed(data)):
            payload = data_of(event)
            if not payload:
                continue
            if payload == b"[DONE]":
                out += self._end()
                self.complete = True
                continue
            chunk = orjson.loads(payload)
            if isinstance(chunk.get("error"), dict):
                out += self._error(chunk["error"])
                continue
            out += self._chunk(chunk)
        self.chunks += len(out)
        return b"".join(out)

    def finish(self) -> bytes:
        """A stream that ended without ``[DONE]`` still ends complete."""
        return b"".join(self._end())

    def _chunk(self, chunk: dict[str, Any]) -> list[bytes]:
        out = self._begin(chunk)
        usage = Usage.from_openai(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        for choice in chunk.get("choices") or []:
            if choice.get("index", 0) == 0:
                out += self._choice(choice.get("delta") or {}, choice.get("finish_reason"))
        return out

    def _begin(self, chunk: dict[str, Any]) -> list[bytes]:
        """The events the first chunk opens the stream with; none after it."""
        raise NotImplementedError

    def _choice(self, delta: dict[str, Any], finish_reason: str | None) -> list[bytes]:
        raise NotImplementedError

    def _error(self, error: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def _end(self) -> list[bytes]:
        raise NotImplementedError
