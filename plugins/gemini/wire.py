"""
The Gemini direction (Google AI Studio and Vertex AI share the wire format): an OpenAI chat
completions request becomes a ``generateContent`` request, and the answer (JSON or SSE) a
chat completion (JSON or chunks); embeddings go to ``embedContent``/``batchEmbedContents``
(Vertex AI's text embedding models: ``:predict``).

Gemini 3 wants a function call's ``thoughtSignature`` back with the call in the next turn;
OpenAI's tool call has nowhere to keep it but its id, so the signature rides in the id
(`tool_call_id`) and is taken out again when the caller sends the call back.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
import secrets
from typing import Any

import orjson
from zope.interface import implementer

from txgateway.dialects.openai import error_body, stream_error_event
from txgateway.streams import EventSplitter, data_of, events
from txgateway.translate import (
    ITurnWords,
    ToChatChunks,
    Untranslatable,
    alternating_turns,
    arguments_object,
    assistant_choice,
    chat_completion_object,
    chat_text,
    content_parts,
    data_url,
    tool_call,
)
from txgateway.usage import Usage

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    **dict.fromkeys(("SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
                     "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION"),
                    "content_filter"),
}
#: The HTTP status of each ``google.rpc.Code`` name, for errors met inside a stream.
ERROR_STATUSES = {
    "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ABORTED": 409,
    "ALREADY_EXISTS": 409, "RESOURCE_EXHAUSTED": 429, "CANCELLED": 499, "INTERNAL": 500,
    "UNKNOWN": 500, "DATA_LOSS": 500, "NOT_IMPLEMENTED": 501, "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}
#: The keys Gemini's ``Schema`` (a subset of OpenAPI 3.0's) knows; it refuses any other, such
#: as ``additionalProperties``, ``$schema``, ``$ref``/``$defs``, ``examples``, ``const``,
#: ``oneOf``/``allOf``, ``exclusiveMinimum`` or ``strict``.
SCHEMA_KEYS = frozenset((
    "type", "format", "title", "description", "nullable", "enum", "default", "example",
    "items", "minItems", "maxItems", "properties", "required", "minProperties",
    "maxProperties", "propertyOrdering", "minLength", "maxLength", "pattern", "minimum",
    "maximum", "anyOf",
))
#: ``thinkingBudget`` for OpenAI's ``reasoning_effort`` ("none" turns thinking off where the
#: model allows it).
THINKING_BUDGETS = {"none": 0, "minimal": 512, "low": 1024, "medium": 2048, "high": 8192,
                    "xhigh": 24576}
#: Separates a tool call id from the thought signature it carries.
SIGNATURE_MARK = "_ts_"


# --- requests -----------------------------------------------------------------------------


def generate_request(chat: dict[str, Any]) -> dict[str, Any]:
    """The ``generateContent`` request for a chat completions request."""
    messages = chat.get("messages") or []
    system, contents = alternating_turns(messages, _GeminiWords(messages))
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    declarations = [_declaration(tool["function"]) for tool in chat.get("tools") or []
                    if tool.get("type") == "function"]
    if declarations:
        request["tools"] = [{"functionDeclarations": declarations}]
    calling = _calling_config(chat.get("tool_choice"))
    if calling is not None:
        request["toolConfig"] = {"functionCallingConfig": calling}
    config = _generation_config(chat)
    if config:
        request["generationConfig"] = config
    return request


def generate_method(stream: bool) -> str:
    """What follows ``models/{model}:`` in the URL of a chat call: SSE for a stream."""
    return "streamGenerateContent?alt=sse" if stream else "generateContent"


@implementer(ITurnWords)
class _GeminiWords:
    """
    Gemini's parts: ``functionCall`` and ``functionResponse``, the latter named after its call
    (looked up among ``messages``' tool calls when the tool message names none).
    """

    key = "parts"
    model_role = "model"

    def __init__(self, messages: list[Any]) -> None:
        self._names = {call.get("id"): (call.get("function") or {}).get("name")
                       for message in messages if message.get("role") == "assistant"
                       for call in message.get("tool_calls") or []}

    def system(self, content: Any) -> list[dict[str, Any]]:
        text = chat_text(content)
        return [{"text": text}] if text else []

    def content(self, content: Any) -> list[dict[str, Any]]:
        parts = []
        for part in content_parts(content):
            kind = part.get("type")
            if kind == "text":
                parts.append({"text": part.get("text", "")})
            elif kind == "image_url":
                parts.append(media_part(part["image_url"]["url"]))
            elif kind == "input_audio":
                audio = part["input_audio"]
                parts.append({"inlineData": {"mimeType": f"audio/{audio.get('format', 'wav')}",
                                             "data": audio.get("data", "")}})
            elif kind == "file" and (part.get("file") or {}).get("file_data"):
                parts.append(media_part(part["file"]["file_data"]))
        return parts

    def tool_call(self, call: dict[str, Any]) -> dict[str, Any]:
        function = call.get("function") or {}
        part: dict[str, Any] = {"functionCall": {
            "name": function.get("name"), "args": arguments_object(function.get("arguments"))}}
        signature = _signature_of(call.get("id") or "")
        if signature:
            part["thoughtSignature"] = signature
        return part

    def tool_result(self, message: dict[str, Any]) -> dict[str, Any]:
        name = message.get("name") or self._names.get(message.get("tool_call_id")) or ""
        return {"functionResponse": {
            "name": name, "response": {"content": chat_text(message.get("content"))}}}


def media_part(url: str) -> dict[str, Any]:
    """A data URL as ``inlineData``; any other URL as ``fileData`` with a guessed type."""
    inline = data_url(url)
    if inline is not None:
        return {"inlineData": {"mimeType": _normal_mime(inline[0]), "data": inline[1]}}
    mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "application/octet-stream"
    return {"fileData": {"mimeType": mime, "fileUri": url}}


def _normal_mime(mime: str) -> str:
    return "image/jpeg" if mime == "image/jpg" else mime


def tool_call_id(signature: str | None) -> str:
    """A fresh tool call id, carrying a thought signature when the call had one."""
    call_id = "call_" + secrets.token_hex(12)
    if not signature:
        return call_id
    # URL-safe base64 keeps the id within Anthropic's tool_use id alphabet.
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return call_id
    return call_id + SIGNATURE_MARK + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _signature_of(call_id: str) -> str | None:
    _, mark, carried = call_id.partition(SIGNATURE_MARK)
    if not mark or not carried:
        return None
    try:
        raw = base64.urlsafe_b64decode(carried + "=" * (-len(carried) % 4))
    except (binascii.Error, ValueError):
        return None
    return base64.b64encode(raw).decode()


def _declaration(function: dict[str, Any]) -> dict[str, Any]:
    declaration: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        declaration["description"] = function["description"]
    parameters = function.get("parameters")
    if isinstance(parameters, dict) and parameters.get("properties"):
        # Gemini refuses an object schema with no properties: a call without arguments
        # has no parameters at all.
        declaration["parameters"] = clean_schema(parameters)
    return declaration


def clean_schema(schema: Any, definitions: dict[str, Any] | None = None,
                 seen: frozenset[str] = frozenset()) -> Any:
    """
    A JSON schema as Gemini's ``Schema`` takes it: ``$ref`` inlined from ``$defs`` (a
    recursive one becomes a plain object), ``const`` and ``oneOf`` as ``enum``/``anyOf``,
    ``["x", "null"]`` types as ``nullable``, and every key Gemini does not know dropped.
    """
    if not isinstance(schema, dict):
        return schema
    if definitions is None:
        definitions = {**(schema.get("definitions") or {}), **(schema.get("$defs") or {})}
    reference = schema.get("$ref")
    if isinstance(reference, str):
        name = reference.rsplit("/", 1)[-1]
        if name in seen or name not in definitions:
            return {"type": "object"}
        return clean_schema({**definitions[name], **{k: v for k, v in schema.items()
                                                     if k != "$ref"}},
                            definitions, seen | {name})
    schema = dict(schema)
    if "const" in schema and "enum" not in schema:
        schema["enum"] = [schema["const"]]
    if "oneOf" in schema and "anyOf" not in schema:
        schema["anyOf"] = schema["oneOf"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        if len(kinds) < len(kind):
            schema["nullable"] = True
        if len(kinds) == 1:
            schema["type"] = kinds[0]
        else:
            schema.pop("type")
            schema["anyOf"] = [{"type": k} for k in kinds]
    cleaned: dict[str, Any] = {}
    for key, value in schema.items():
        if key not in SCHEMA_KEYS:
            continue
        if key == "properties" and isinstance(value, dict):
            if not value:
                continue
            value = {name: clean_schema(item, definitions, seen) for name, item in value.items()}
        elif key == "items":
            value = clean_schema(value, definitions, seen)
        elif key == "anyOf" and isinstance(value, list):
            options = [option for option in value
                       if not (isinstance(option, dict) and option.get("type") == "null")]
            if len(options) < len(value):
                cleaned["nullable"] = True
            if len(options) == 1:
                cleaned.update(clean_schema(options[0], definitions, seen))
                continue
            value = [clean_schema(option, definitions, seen) for option in options]
        elif key == "enum":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                continue  # Gemini's enums are strings
        cleaned[key] = value
    return cleaned


def _calling_config(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    mode = {"auto": "AUTO", "none": "NONE", "required": "ANY"}.get(choice)
    return None if mode is None else {"mode": mode}


def _generation_config(chat: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, key in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"),
                      ("frequency_penalty", "frequencyPenalty"),
                      ("presence_penalty", "presencePenalty"), ("seed", "seed")):
        if chat.get(name) is not None:
            config[key] = chat[name]
    max_tokens = chat.get("max_completion_tokens") or chat.get("max_tokens")
    if max_tokens:
        config["maxOutputTokens"] = max_tokens
    stop = chat.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if isinstance(chat.get("n"), int) and chat["n"] > 1:
        config["candidateCount"] = chat["n"]
    response_format = chat.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind in ("json_object", "json_schema"):
            config["responseMimeType"] = "application/json"
        schema = (response_format.get("json_schema") or {}).get("schema")
        if kind == "json_schema" and isinstance(schema, dict):
            config["responseSchema"] = clean_schema(schema)
    budget = THINKING_BUDGETS.get(chat.get("reasoning_effort") or "")
    if budget is not None:
        config["thinkingConfig"] = ({"thinkingBudget": budget, "includeThoughts": True}
                                    if budget else {"thinkingBudget": 0})
    return config


def embed_request(parsed: dict[str, Any], model: str) -> tuple[str, dict[str, Any]]:
    """The method (``embedContent`` or ``batchEmbedContents``) and body for an embeddings call."""
    inputs = parsed.get("input")
    single = isinstance(inputs, str)
    texts = [inputs] if single else inputs
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise Untranslatable("Gemini embeds text only: 'input' must be a string or a "
                                 "list of strings, not token arrays")
    extra = {}
    if isinstance(parsed.get("dimensions"), int):
        extra["outputDimensionality"] = parsed["dimensions"]
    if single:
        return "embedContent", {"content": {"parts": [{"text": inputs}]}, **extra}
    return "batchEmbedContents", {"requests": [
        {"model": f"models/{model}", "content": {"parts": [{"text": text}]}, **extra}
        for text in texts]}


def predict_embed_request(parsed: dict[str, Any]) -> dict[str, Any]:
    """
    The ``:predict`` body of Vertex AI's text embedding models (``text-embedding-*``) for an
    embeddings call: an instance per input, with the caller's ``task_type`` if it sent one
    (``RETRIEVAL_QUERY``...); ``dimensions`` as ``outputDimensionality``.  Inputs too long are
    an error, as OpenAI's, rather than cut short (``autoTruncate`` off).
    """
    inputs = parsed.get("input")
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise Untranslatable("Vertex AI embeds text only: 'input' must be a string or a "
                             "list of strings, not token arrays")
    task = parsed.get("task_type")
    extra = {"task_type": task} if isinstance(task, str) else {}
    parameters: dict[str, Any] = {"autoTruncate": False}
    if isinstance(parsed.get("dimensions"), int):
        parameters["outputDimensionality"] = parsed["dimensions"]
    return {"instances": [{"content": text, **extra} for text in texts],
            "parameters": parameters}


# --- answers ------------------------------------------------------------------------------


def usage_of(metadata: Any) -> Usage | None:
    """
    Gemini's ``usageMetadata`` as a `Usage`: ``candidatesTokenCount`` leaves out the thinking
    (``thoughtsTokenCount``), which OpenAI's completion tokens include; the prompt counts the
    cached part and the tool-use prompt too.
    """
    if not isinstance(metadata, dict) or not isinstance(metadata.get("promptTokenCount"), int):
        return None

    def count(key: str) -> int:
        value = metadata.get(key)
        return value if isinstance(value, int) else 0

    thoughts = count("thoughtsTokenCount")
    return Usage(input_tokens=count("promptTokenCount") + count("toolUsePromptTokenCount"),
                 output_tokens=count("candidatesTokenCount") + thoughts,
                 cached_input_tokens=count("cachedContentTokenCount"),
                 reasoning_tokens=thoughts)


def _finish_reason(reason: Any, called: bool) -> str:
    if called and reason in (None, "STOP"):
        return "tool_calls"
    return FINISH_REASONS.get(reason, "stop")


def _read_parts(parts: list[Any]) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """The text, the thoughts and the tool calls of a candidate's parts."""
    text: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, dict):
            continue
        call = part.get("functionCall")
        if isinstance(call, dict):
            calls.append(tool_call(call.get("id") or tool_call_id(part.get("thoughtSignature")),
                                   call.get("name"), call.get("args")))
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else text).append(part["text"])
    return text, thoughts, calls


def chat_completion(answer: dict[str, Any], created: int) -> tuple[dict[str, Any], Usage | None]:
    """A chat completion for a ``generateContent`` answer, and its usage."""
    choices = []
    for position, candidate in enumerate(answer.get("candidates") or []):
        text, thoughts, calls = _read_parts((candidate.get("content") or {}).get("parts") or [])
        choices.append(assistant_choice(
            candidate.get("index", position), "".join(text) if text or not calls else None,
            thoughts, calls, _finish_reason(candidate.get("finishReason"), bool(calls))))
    if not choices:  # the prompt itself was blocked (promptFeedback.blockReason)
        choices.append(assistant_choice(0, "", [], [], "content_filter"))
    usage = usage_of(answer.get("usageMetadata"))
    return chat_completion_object(_completion_id(answer), created,
                                  answer.get("modelVersion", ""), choices, usage), usage


def _completion_id(answer: dict[str, Any]) -> str:
    return "chatcmpl-" + str(answer.get("responseId") or secrets.token_hex(12))


def embeddings(answer: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage | None]:
    """
    OpenAI's embeddings list for an ``embedContent``/``batchEmbedContents`` answer.  Gemini
    reports no usage for embeddings: the usage is None, for the endpoint to estimate from the
    input it holds (this answer does not have it).
    """
    found = answer.get("embeddings")
    if found is None:
        found = [answer["embedding"]]
    usage = usage_of(answer.get("usageMetadata"))
    prompt = usage.input_tokens if usage is not None else 0
    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": index, "embedding": item["values"]}
                     for index, item in enumerate(found)],
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}, usage


def predict_embeddings(answer: dict[str, Any]) -> tuple[dict[str, Any], Usage | None]:
    """
    OpenAI's embeddings list for a ``:predict`` answer of a text embedding model; its usage
    the predictions' ``statistics.token_count`` summed (None when none is reported).
    """
    embeddings = [prediction["embeddings"] for prediction in answer["predictions"]]
    counts: list[Any] = [(item.get("statistics") or {}).get("token_count")
                         for item in embeddings]
    usage = (Usage(input_tokens=int(sum(counts)))
             if counts and all(isinstance(count, int | float) for count in counts) else None)
    prompt = usage.input_tokens if usage is not None else 0
    return {"object": "list", "model": "",
            "data": [{"object": "embedding", "index": index, "embedding": item["values"]}
                     for index, item in enumerate(embeddings)],
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}, usage


def error_of(body: bytes | dict[str, Any]) -> tuple[int, str, str] | None:
    """The (status, google.rpc status name, message) of a Google error body, or None."""
    try:
        answer = orjson.loads(body) if isinstance(body, bytes) else body
    except orjson.JSONDecodeError:
        return None
    if isinstance(answer, list) and answer:  # some Google front ends wrap it in a list
        answer = answer[0]
    error = answer.get("error") if isinstance(answer, dict) else None
    if not isinstance(error, dict):
        return None
    name = str(error.get("status") or "UNKNOWN")
    code = error.get("code")
    status = code if isinstance(code, int) and 400 <= code < 600 else ERROR_STATUSES.get(name,
                                                                                         502)
    return status, name, str(error.get("message", ""))


def openai_error(status: int, body: bytes) -> bytes | None:
    """An OpenAI error for a Google one (same status, the rpc name as its code), or None."""
    error = error_of(body)
    if error is None:
        return None
    return error_body(status, error[2], error[1].lower())


class GeminiToChatStream(ToChatChunks):
    """
    Turns a ``streamGenerateContent?alt=sse`` stream into chat completion chunks as it
    arrives.  Gemini sends whole function calls, each becoming one complete tool call delta;
    ``usageMetadata`` is cumulative, so the last one seen wins.  Gemini has no end event: the
    usage chunk and ``[DONE]`` are written when the body ends (`finish`).
    """

    def __init__(self, created: int, wants_usage: bool) -> None:
        super().__init__(created, wants_usage)
        self._splitter = EventSplitter()
        self._started: set[int] = set()
        #: How many tool calls each choice has had.
        self._calls: dict[int, int] = {}
        self._ended = False

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for event in events(self._splitter.feed(data)):
            payload = data_of(event)
            if payload and not self._ended:
                out.extend(self._answer(orjson.loads(payload)))
        self.chunks += len(out)
        return b"".join(out)

    def _answer(self, answer: dict[str, Any]) -> list[bytes]:
        error = error_of(answer)
        if error is not None:
            self._ended = True
            self.error = (error[0], error[2])
            return [stream_error_event(error[0], error[2], error[1].lower())]
        if not self._id:
            self._id = _completion_id(answer)
        self._model = answer.get("modelVersion") or self._model
        usage = usage_of(answer.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        candidates = answer.get("candidates") or []
        if not candidates and (answer.get("promptFeedback") or {}).get("blockReason"):
            return [*self._start(0), self._chunk({}, "content_filter")]
        out: list[bytes] = []
        for position, candidate in enumerate(candidates):
            index = candidate.get("index", position)
            out += self._start(index)
            text, thoughts, calls = _read_parts(
                (candidate.get("content") or {}).get("parts") or [])
            if thoughts:
                out.append(self._chunk({"reasoning_content": "".join(thoughts)}, index=index))
            if text and "".join(text):
                out.append(self._chunk({"content": "".join(text)}, index=index))
            for call in calls:
                position_in_choice = self._calls.get(index, 0)
                self._calls[index] = position_in_choice + 1
                out.append(self._chunk({"tool_calls": [{"index": position_in_choice, **call}]},
                                       index=index))
            reason = candidate.get("finishReason")
            if reason:
                out.append(self._chunk({}, _finish_reason(reason, index in self._calls), index))
        return out

    def _start(self, index: int) -> list[bytes]:
        if index in self._started:
            return []
        self._started.add(index)
        return [self._chunk({"role": "assistant", "content": ""}, index=index)]

    def finish(self) -> bytes:
        """The end of the body: the usage chunk when asked for, and ``[DONE]``."""
        if self._ended:
            return b""
        self._ended = True
        out = self._done()
        self.chunks += len(out)
        return b"".join(out)
