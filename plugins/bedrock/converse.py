"""
The Bedrock provider's direction: an OpenAI chat completions request becomes a Converse
request, and the Converse answer (JSON, or a ConverseStream AWS event stream) becomes a chat
completion (JSON or chunks); OpenAI embeddings requests become Titan or Cohere ``invoke``
bodies, and their answers OpenAI's.

Converse's ``usage.inputTokens`` counts only the input neither read from nor written to the
prompt cache (AWS: total input = inputTokens + cacheReadInputTokens + cacheWriteInputTokens),
as Anthropic's ``input_tokens`` does; OpenAI's ``prompt_tokens`` counts all three.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from zope.interface import implementer

from txgateway.dialects.openai import stream_error_event
from txgateway.plugins.bedrock.aws import AwsEventStreamDecoder, EventStreamCorrupt
from txgateway.translate import (
    ITurnWords,
    ToChatChunks,
    Untranslatable,
    alternating_turns,
    arguments_object,
    assistant_choice,
    chat_completion_object,
    content_parts,
    data_url,
    tool_call,
)
from txgateway.usage import Usage, estimate_tokens

FINISH_REASONS: dict[str | None, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
#: Converse's image formats by the media type of a data URL.
IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                 "image/gif": "gif", "image/webp": "webp"}
#: The HTTP status of each Bedrock runtime exception, by its event-stream ``:exception-type``.
EXCEPTION_STATUSES = {
    "validationException": 400,
    "serviceQuotaExceededException": 400,
    "accessDeniedException": 403,
    "resourceNotFoundException": 404,
    "modelTimeoutException": 408,
    "modelErrorException": 424,
    "modelStreamErrorException": 424,
    "throttlingException": 429,
    "modelNotReadyException": 429,
    "internalServerException": 500,
    "serviceUnavailableException": 503,
}


def converse_request(chat: dict[str, Any]) -> dict[str, Any]:
    """The Converse (or ConverseStream) body for a chat completions request."""
    system, messages = alternating_turns(chat.get("messages") or [], _ConverseWords())
    request: dict[str, Any] = {"messages": messages}
    if system:
        request["system"] = system
    inference: dict[str, Any] = {}
    max_tokens = chat.get("max_completion_tokens") or chat.get("max_tokens")
    if max_tokens:
        inference["maxTokens"] = max_tokens
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP")):
        if chat.get(ours) is not None:
            inference[theirs] = chat[ours]
    stop = chat.get("stop")
    if stop:
        inference["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if inference:
        request["inferenceConfig"] = inference
    tool_config = _tool_config(chat, messages)
    if tool_config is not None:
        request["toolConfig"] = tool_config
    return request


@implementer(ITurnWords)
class _ConverseWords:
    """Converse's content blocks: ``toolUse`` and ``toolResult``; images as bytes."""

    key = "content"
    model_role = "assistant"

    def system(self, content: Any) -> list[dict[str, Any]]:
        return [block for block in self.content(content) if "text" in block]

    def content(self, content: Any) -> list[dict[str, Any]]:
        """Chat content as Converse content blocks; blank text dropped."""
        blocks = []
        for part in content_parts(content):
            kind = part.get("type")
            if kind == "text" and part.get("text"):
                blocks.append({"text": part["text"]})
            elif kind == "image_url":
                blocks.append({"image": _image(part["image_url"]["url"])})
        return blocks

    def tool_call(self, call: dict[str, Any]) -> dict[str, Any]:
        function = call.get("function") or {}
        return {"toolUse": {"toolUseId": call.get("id"), "name": function.get("name"),
                            "input": arguments_object(function.get("arguments"))}}

    def tool_result(self, message: dict[str, Any]) -> dict[str, Any]:
        return {"toolResult": {"toolUseId": message.get("tool_call_id"),
                               "content": self.content(message.get("content"))}}


def _image(url: str) -> dict[str, Any]:
    """An image block's body: Converse takes the bytes (base64 on the wire), never a URL."""
    inline = data_url(url)
    if inline is None:
        raise Untranslatable("Bedrock Converse takes images as data URLs "
                             "(data:image/png;base64,...), not http(s) URLs")
    media_type, data = inline
    image_format = IMAGE_FORMATS.get(media_type.lower())
    if image_format is None:
        raise Untranslatable(f"Bedrock Converse takes png, jpeg, gif or webp images, "
                             f"not {media_type}")
    return {"format": image_format, "source": {"bytes": data}}


def _tool_config(chat: dict[str, Any], turns: list[dict[str, Any]]) -> dict[str, Any] | None:
    """
    ``toolConfig``: Converse has no "none" choice, so then the tools are left out, unless the
    conversation holds tool blocks, which Converse refuses without a ``toolConfig``.
    """
    tools = [{"toolSpec": {
        "name": tool["function"]["name"],
        **({"description": tool["function"]["description"]}
           if tool["function"].get("description") else {}),
        "inputSchema": {"json": tool["function"].get("parameters")
                        or {"type": "object", "properties": {}}}}}
        for tool in chat.get("tools") or [] if tool.get("type") == "function"]
    if not tools:
        return None
    choice = chat.get("tool_choice")
    if choice == "none":
        used = any("toolUse" in block or "toolResult" in block
                   for turn in turns for block in turn["content"])
        return {"tools": tools} if used else None
    config: dict[str, Any] = {"tools": tools}
    if isinstance(choice, dict):
        config["toolChoice"] = {"tool": {"name": choice["function"]["name"]}}
    elif choice == "required":
        config["toolChoice"] = {"any": {}}
    elif choice == "auto":
        config["toolChoice"] = {"auto": {}}
    return config


def converse_usage(usage: Any) -> Usage | None:
    """A Converse ``TokenUsage`` as a `Usage` (cache reads and writes part of the input)."""
    if not isinstance(usage, dict):
        return None
    fresh, output = usage.get("inputTokens"), usage.get("outputTokens")
    if not isinstance(fresh, int) or not isinstance(output, int):
        return None
    read = usage.get("cacheReadInputTokens")
    written = usage.get("cacheWriteInputTokens")
    read = read if isinstance(read, int) else 0
    written = written if isinstance(written, int) else 0
    return Usage(input_tokens=fresh + read + written, output_tokens=output,
                 cached_input_tokens=read, cache_creation_tokens=written)


def completion_id() -> str:
    """Converse answers carry no id: one of OpenAI's form, made up."""
    return "chatcmpl-" + os.urandom(12).hex()


def chat_completion(answer: dict[str, Any], created: int,
                    model: str = "") -> tuple[dict[str, Any], Usage | None]:
    """A chat completion for a Converse answer, and its usage."""
    text, reasoning, calls = [], [], []
    for block in ((answer.get("output") or {}).get("message") or {}).get("content") or []:
        if "text" in block:
            text.append(block["text"])
        elif "toolUse" in block:
            use = block["toolUse"]
            calls.append(tool_call(use.get("toolUseId"), use.get("name"), use.get("input")))
        elif "reasoningContent" in block:
            reasoning.append(((block["reasoningContent"] or {}).get("reasoningText") or {})
                             .get("text", ""))
    choice = assistant_choice(0, "".join(text) if text else None, reasoning, calls,
                              FINISH_REASONS.get(answer.get("stopReason"), "stop"))
    usage = converse_usage(answer.get("usage"))
    return chat_completion_object(completion_id(), created, model, [choice], usage), usage


def error_message(body: bytes) -> tuple[str, str | None] | None:
    """
    The message of a Bedrock JSON error (``{"message": ...}``; the type, when the body holds
    it in ``__type``, else it travels in the ``x-amzn-ErrorType`` header), or None.
    """
    try:
        error = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(error, dict):
        return None
    message = error.get("message", error.get("Message"))
    if not isinstance(message, str):
        return None
    kind = error.get("__type")
    if isinstance(kind, str):
        kind = kind.split(":", 1)[0].rsplit("#", 1)[-1]
    return message, kind if isinstance(kind, str) else None


class ConverseStreamToChat(ToChatChunks):
    """
    Turns a ConverseStream AWS event stream into chat completion chunks as it arrives.

    The stream ends with ``messageStop`` (the finish chunk) then ``metadata`` (usage, the
    usage chunk, [DONE]); an exception frame, or a corrupt frame, ends it with an error event
    the openai SDK raises.
    """

    def __init__(self, created: int, wants_usage: bool, model: str = "") -> None:
        super().__init__(created, wants_usage, model)
        self._id = completion_id()
        self._decoder = AwsEventStreamDecoder()
        self._stopped = False
        self._ended = False

    def feed(self, data: bytes) -> bytes:
        if self.error is not None or self._ended:
            return b""
        out: list[bytes] = []
        try:
            messages = self._decoder.feed(data)
        except EventStreamCorrupt as corrupt:
            messages = corrupt.messages
            failure: tuple[int, str, str] | None = (
                502, f"the upstream's event stream is corrupt: {corrupt}", "upstream_error")
        else:
            failure = None
        for message in messages:
            out.extend(self._message(message.headers, message.payload))
            if self.error is not None:
                break
        if failure is not None and self.error is None:
            self.error = failure[:2]
            out.append(stream_error_event(*failure))
        self.chunks += len(out)
        return b"".join(out)

    def finish(self) -> bytes:
        """A stream cut after ``messageStop`` but before ``metadata`` still ends properly."""
        if self._stopped and not self._ended and self.error is None:
            self._ended = True
            return b"data: [DONE]\n\n"
        return b""

    def _message(self, headers: dict[str, Any], payload: bytes) -> list[bytes]:
        kind = headers.get(":message-type")
        if kind == "exception":
            exception = headers.get(":exception-type", "internalServerException")
            return self._fail(exception, payload)
        if kind == "error":
            code = headers.get(":error-code", "internalServerException")
            self.error = (EXCEPTION_STATUSES.get(code, 502), headers.get(":error-message", ""))
            return [stream_error_event(*self.error, code)]
        try:
            data = orjson.loads(payload) if payload else {}
        except orjson.JSONDecodeError:
            self.error = (502, "the upstream sent an event that is not JSON")
            return [stream_error_event(*self.error, "upstream_error")]
        return self._event(headers.get(":event-type"), data)

    def _fail(self, exception: str, payload: bytes) -> list[bytes]:
        error = error_message(payload)
        self.error = (EXCEPTION_STATUSES.get(exception, 502),
                      error[0] if error else payload.decode("utf-8", "replace"))
        return [stream_error_event(*self.error, exception)]

    def _event(self, name: str | None, data: dict[str, Any]) -> list[bytes]:
        if name == "messageStart":
            return [self._chunk({"role": data.get("role", "assistant"), "content": ""})]
        if name == "contentBlockStart":
            use = (data.get("start") or {}).get("toolUse")
            if not use:
                return []
            return self._tool_start(data.get("contentBlockIndex", 0), use.get("toolUseId"),
                                    use.get("name"))
        if name == "contentBlockDelta":
            return self._delta(data.get("contentBlockIndex", 0), data.get("delta") or {})
        if name == "contentBlockStop":
            return self._block_stop(data.get("contentBlockIndex"))
        if name == "messageStop":
            self._stopped = True
            return [self._chunk({}, FINISH_REASONS.get(data.get("stopReason"), "stop"))]
        if name == "metadata":
            self.usage = converse_usage(data.get("usage"))
            self._ended = True
            return self._done()
        return []

    def _delta(self, block: int, delta: dict[str, Any]) -> list[bytes]:
        if "text" in delta:
            return [self._chunk({"content": delta["text"]})]
        if "toolUse" in delta:
            fragment = (delta["toolUse"] or {}).get("input")
            return self._arguments(block, fragment) if fragment else []
        reasoning = delta.get("reasoningContent")
        if isinstance(reasoning, dict) and reasoning.get("text"):
            return [self._chunk({"reasoning_content": reasoning["text"]})]
        return []



def is_titan_embedding(model: str) -> bool:
    return "amazon.titan-embed" in model


def is_cohere_embedding(model: str) -> bool:
    return "cohere.embed" in model


def embeddings_request(request: dict[str, Any], model: str) -> dict[str, Any]:
    """
    The ``invoke`` body of an OpenAI embeddings request: Titan's (one text per call, so one
    input only) or Cohere's (a list of texts; ``dimensions`` for Embed v4).  Token-array
    inputs are not translatable.
    """
    given = request.get("input")
    texts = [given] if isinstance(given, str) else given
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise Untranslatable("Bedrock embeddings take text inputs, not token arrays")
    if is_cohere_embedding(model):
        cohere: dict[str, Any] = {"texts": texts, "input_type": "search_document"}
        if request.get("dimensions") and "embed-v4" in model:  # v3 models have one size
            cohere["output_dimension"] = request["dimensions"]
        return cohere
    if is_titan_embedding(model):
        if len(texts) != 1:
            raise Untranslatable("Amazon Titan embeds one input per call: send one input, "
                                 "not a list of several")
        body: dict[str, Any] = {"inputText": texts[0]}
        if request.get("dimensions"):
            body["dimensions"] = request["dimensions"]
        return body
    raise Untranslatable(f"{model} is not a Bedrock embedding model the gateway translates "
                         "(amazon.titan-embed-*, cohere.embed-*)")


def embeddings_response(answer: dict[str, Any],
                        model: str = "") -> tuple[dict[str, Any], Usage | None]:
    """
    An OpenAI embeddings response for a Titan or Cohere answer.  Cohere's body gives no token
    count (Bedrock sends it in a header), so its usage is estimated from the texts.
    """
    if "embedding" in answer:
        vectors = [answer["embedding"]]
        count = answer.get("inputTextTokenCount")
        usage = Usage(input_tokens=count) if isinstance(count, int) else None
    else:
        vectors = answer["embeddings"]
        if isinstance(vectors, dict):  # embedding_types asked: by type
            vectors = vectors["float"]
        size = sum(len(text.encode()) for text in answer.get("texts") or [])
        usage = Usage(input_tokens=estimate_tokens(size), estimated=True)
    response: dict[str, Any] = {
        "object": "list", "model": model,
        "data": [{"object": "embedding", "index": index, "embedding": vector}
                 for index, vector in enumerate(vectors)]}
    if usage is not None:
        response["usage"] = {"prompt_tokens": usage.input_tokens,
                             "total_tokens": usage.input_tokens}
    return response, usage
