"""
The demo provider's realtime server: an in-process peer speaking the GA Realtime protocol (or
the beta one, to a caller that asked for beta), so ``/v1/realtime?model=demo`` works with no
network and no key.

It answers ``session.update``, ``input_audio_buffer.*``, ``conversation.item.create``,
``conversation.item.retrieve``, ``response.create`` and ``response.cancel`` with the event
sequences OpenAI sends, shaped as the openai SDK's GA or beta types say.  Its usage
is honest under its own stated rules: text tokens by the demo tokenizer; input audio at 10
tokens a second, output audio at 20; each response reads the whole conversation as input, and
the part an earlier response already read is reported as cached.
"""

from __future__ import annotations

import base64
import binascii
from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import orjson
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from txgateway.realtime.legs import ILeg, IUpstreamListener

#: pcm16 at 24 kHz, mono.
BYTES_PER_SECOND = 48000
INPUT_AUDIO_TOKENS_PER_SECOND = 10
OUTPUT_AUDIO_TOKENS_PER_SECOND = 20
#: Audio sent per transcript token: 200 ms, 9600 bytes, like a real voice's pace.
AUDIO_PER_TOKEN = BYTES_PER_SECOND // 5
#: OpenAI refuses to commit less than 100 ms of audio.
MIN_COMMIT = BYTES_PER_SECOND // 10


@attrs.frozen
class _Item:
    """A conversation item, with the tokens it costs as input and what a retrieve returns."""

    id: str
    text_tokens: int
    audio_tokens: int
    body: dict[str, Any]


@implementer(ILeg, IPushProducer)
class DemoRealtime:
    """One demo realtime session; events are played out on the reactor's clock."""

    def __init__(self, clock: Any, listener: IUpstreamListener, model: str, intent: str,
                 tokenize: Callable[[str], list[str]], delay: float, beta: bool) -> None:
        self._clock = clock
        self._listener = listener
        self._tokenize = tokenize
        self._delay = delay
        self._serial = 0
        self._buffered = 0
        self._items: list[_Item] = []
        #: Input tokens already read by a response: the cached prefix of the next one.
        self._read = (0, 0)
        self._active: str | None = None
        self._outbox: deque[tuple[str | None, float, dict[str, Any]]] = deque()
        self._timer: Any = None
        self._paused = False
        self._closed = False
        self._dialect = _BETA if beta else _GA
        self._session = self._dialect.session(self._id("sess"), model, intent,
                                              int(clock.seconds()) + 3600)
        self._emit(None, 0, {"type": "session.created", "session": self._session})


    # ILeg: frames from the caller -------------------------------------------------------

    producer = property(lambda self: self)

    def pause_source(self, producer: Any) -> None:
        """Caller frames are handled as they come, so the caller is never paused."""

    def send(self, payload: bytes, is_binary: bool) -> None:
        if self._closed:
            return
        event = None if is_binary else _object(payload)
        if event is None:
            return self._error("invalid_json", "The event is not a JSON object.", None)
        handler = _HANDLERS.get(event.get("type"))
        if handler is None:
            return self._error("invalid_event", f"Unknown event type {event.get('type')!r}.",
                               event.get("event_id"))
        handler(self, event)

    def close(self, code: int, reason: str) -> None:
        if not self._closed:
            self._closed = True
            self._stop_timer()
            self._outbox.clear()
            self._listener.upstream_closed(True, code, reason)

    def drop(self) -> None:
        """In process there is no connection to drop: the session just ends."""
        self.close(1001, "the session was dropped")

    # IPushProducer: the caller's transport pauses us --------------------------------------

    def pauseProducing(self) -> None:
        self._paused = True
        self._stop_timer()

    def resumeProducing(self) -> None:
        self._paused = False
        self._pump()

    def stopProducing(self) -> None:
        self.close(1001, "the client went away")

    # Client events ------------------------------------------------------------------------

    def _session_update(self, event: dict[str, Any]) -> None:
        update = event.get("session")
        if isinstance(update, dict):
            _merge(self._session, {k: v for k, v in update.items() if k not in ("id", "model")})
        self._emit(None, 0, {"type": "session.updated", "session": self._session})

    def _append(self, event: dict[str, Any]) -> None:
        try:
            self._buffered += len(base64.b64decode(event.get("audio", ""), validate=True))
        except (binascii.Error, TypeError, ValueError):
            self._error("invalid_value", "The audio is not valid base64.", event.get("event_id"))

    def _commit(self, event: dict[str, Any]) -> None:
        if self._buffered < MIN_COMMIT:
            return self._error(
                "input_audio_buffer_commit_empty",
                f"Error committing input audio buffer: buffer too small. Expected at least "
                f"100ms of audio, but buffer only has {self._buffered / 48:.2f}ms of audio.",
                event.get("event_id"))
        seconds = self._buffered / BYTES_PER_SECOND
        self._buffered = 0
        audio_tokens = -(-int(seconds * 1000) * INPUT_AUDIO_TOKENS_PER_SECOND // 1000)
        item = self._add_item(0, audio_tokens, "user",
                              [{"type": "input_audio", "transcript": None}])
        self._emit(None, 0, {"type": "input_audio_buffer.committed",
                             "previous_item_id": self._previous(item), "item_id": item.id})
        if self._dialect.transcription(self._session):
            self._transcribe(item, seconds, audio_tokens)

    def _clear(self, event: dict[str, Any]) -> None:
        self._buffered = 0
        self._emit(None, 0, {"type": "input_audio_buffer.cleared"})

    def _item_create(self, event: dict[str, Any]) -> None:
        item = event.get("item")
        if not isinstance(item, dict):
            return self._error("invalid_value", "Missing item.", event.get("event_id"))
        content = item.get("content")
        if not isinstance(content, list):
            content = []
        self._add_item(self._text_tokens(content), 0, item.get("role", "user"), content)

    def _response_create(self, event: dict[str, Any]) -> None:
        options = event.get("response")
        if not isinstance(options, dict):
            options = {}
        out_of_band = options.get("conversation") == "none"
        if not out_of_band and self._active is not None:
            return self._error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._active}.",
                event.get("event_id"))
        if out_of_band:
            given = options.get("input")
            if not isinstance(given, list):
                given = []
            read = (sum(self._text_tokens(i.get("content") or []) for i in given
                        if isinstance(i, dict)), 0)
            cached = (0, 0)
        else:
            read = (sum(i.text_tokens for i in self._items),
                    sum(i.audio_tokens for i in self._items))
            cached, self._read = self._read, read
        modalities = self._dialect.field(options, self._session, "modalities") or ["text"]
        limit = self._dialect.field(options, self._session, "limit")
        self._respond(options, out_of_band, read, cached, list(modalities), limit)

    def _item_retrieve(self, event: dict[str, Any]) -> None:
        wanted = event.get("item_id")
        item = next((item for item in self._items if item.id == wanted), None)
        if item is None:
            return self._error("item_retrieve_invalid_item_id",
                               f"Error retrieving item: the item with id {wanted!r} does not "
                               "exist.", event.get("event_id"))
        self._emit(None, 0, {"type": "conversation.item.retrieved", "item": item.body})

    def _response_cancel(self, event: dict[str, Any]) -> None:
        running = {rid for rid, _, _ in self._outbox if rid is not None}
        wanted = event.get("response_id") or self._active
        if wanted not in running:
            return self._error("response_cancel_not_active",
                               "Cancellation failed: no active response found.",
                               event.get("event_id"))
        dropped = [entry[2] for entry in self._outbox if entry[0] == wanted]
        self._outbox = deque(entry for entry in self._outbox if entry[0] != wanted)
        done = dropped[-1]
        # Only what was sent is billed: the words never sent come off the output.
        unsent = sum(1 for event in dropped if event["type"] in _TEXT_DELTAS)
        usage = done["response"]["usage"]
        details = usage["output_token_details"]
        audio = details["audio_tokens"] // max(details["text_tokens"], 1)
        details["text_tokens"] -= unsent
        details["audio_tokens"] -= unsent * audio
        usage["output_tokens"] = details["text_tokens"] + details["audio_tokens"]
        usage["total_tokens"] = usage["input_tokens"] + usage["output_tokens"]
        done["response"].update(status="cancelled", status_details={
            "type": "cancelled", "reason": "client_cancelled"})
        self._emit(wanted, 0, done)

    # Answers ------------------------------------------------------------------------------

    def _respond(self, options: dict[str, Any], out_of_band: bool, read: tuple[int, int],
                 cached: tuple[int, int], modalities: list[str], limit: Any) -> None:
        rid = self._id("resp")
        if not out_of_band:
            self._active = rid
        words = self._tokenize(self._reply())
        status, details = "completed", None
        if isinstance(limit, int) and 0 < limit < len(words):
            words = words[:limit]
            status, details = "incomplete", {"type": "incomplete", "reason": "max_output_tokens"}
        item_id = self._id("item")
        audio = "audio" in modalities
        # Content parts are "text"/"audio" in the part events, the dialect's names in items.
        kind = "audio" if audio else "text"
        said = "transcript" if audio else "text"
        item: dict[str, Any] = {"id": item_id, "type": "message", "object": "realtime.item",
                "status": "in_progress", "role": "assistant", "content": []}
        previous = None if out_of_band else (self._items[-1].id if self._items else None)
        response = {"object": "realtime.response", "id": rid, "status": "in_progress",
                    "status_details": None, "output": [],
                    "conversation_id": None if out_of_band else "conv_demo",
                    self._dialect.response_modalities: modalities,
                    "metadata": options.get("metadata"), "usage": None}
        self._emit(rid, 0, {"type": "response.created", "response": dict(response)})
        where = {"response_id": rid, "item_id": item_id, "output_index": 0, "content_index": 0}
        self._emit(rid, 0, {"type": "response.output_item.added", "response_id": rid,
                            "output_index": 0, "item": item})
        if not out_of_band:
            self._emit(rid, 0, {"type": "conversation.item.added",
                                "previous_item_id": previous, "item": item})
        self._emit(rid, 0, {"type": "response.content_part.added", **where,
                            "part": {"type": kind, said: ""}})
        text_delta = "response.output_audio_transcript.delta" if audio else \
            "response.output_text.delta"
        chunk = base64.b64encode(bytes(AUDIO_PER_TOKEN)).decode()
        for word in words:
            self._emit(rid, self._delay, {"type": text_delta, **where, "delta": word})
            if audio:
                self._emit(rid, 0, {"type": "response.output_audio.delta", **where,
                                    "delta": chunk})
        text = "".join(words)
        if audio:
            self._emit(rid, 0, {"type": "response.output_audio.done", **where})
            self._emit(rid, 0, {"type": "response.output_audio_transcript.done", **where,
                                "transcript": text})
        else:
            self._emit(rid, 0, {"type": "response.output_text.done", **where, "text": text})
        self._emit(rid, 0, {"type": "response.content_part.done", **where,
                            "part": {"type": kind, said: text}})
        item = {**item, "status": "completed",
                "content": [{"type": self._dialect.item_parts[kind], said: text}]}
        self._emit(rid, 0, {"type": "response.output_item.done", "response_id": rid,
                            "output_index": 0, "item": item})
        if not out_of_band:
            self._emit(rid, 0, {"type": "conversation.item.done",
                                "previous_item_id": previous, "item": item})
        audio_tokens = len(words) * OUTPUT_AUDIO_TOKENS_PER_SECOND // 5 if audio else 0
        text_tokens = len(words)
        if not out_of_band:
            self._items.append(_Item(item_id, 0 if audio else text_tokens, audio_tokens, item))
        usage = {
            "total_tokens": sum(read) + text_tokens + audio_tokens,
            "input_tokens": sum(read), "output_tokens": text_tokens + audio_tokens,
            "input_token_details": {
                "text_tokens": read[0], "audio_tokens": read[1], "image_tokens": 0,
                "cached_tokens": sum(cached),
                "cached_tokens_details": {"text_tokens": cached[0], "audio_tokens": cached[1],
                                          "image_tokens": 0}},
            "output_token_details": {"text_tokens": text_tokens, "audio_tokens": audio_tokens},
        }
        self._emit(rid, 0, {"type": "response.done", "response": {
            **response, "status": status, "status_details": details, "output": [item],
            "usage": usage}})

    def _transcribe(self, item: _Item, seconds: float, audio_tokens: int) -> None:
        transcript = f"(demo transcript of {seconds:.1f} seconds of audio)"
        item.body["content"][0]["transcript"] = transcript
        output = len(self._tokenize(transcript))
        self._emit(None, self._delay, {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": item.id, "content_index": 0, "transcript": transcript,
            "usage": {"type": "tokens", "input_tokens": audio_tokens, "output_tokens": output,
                      "total_tokens": audio_tokens + output,
                      "input_token_details": {"text_tokens": 0, "audio_tokens": audio_tokens}},
        })

    def _reply(self) -> str:
        return ("Hello from the txgateway demo realtime provider. Route a model to a real "
                "provider in the gateway config to talk to a real voice.")

    def _add_item(self, text_tokens: int, audio_tokens: int, role: Any,
                  content: list[Any]) -> _Item:
        serial = self._id("item")
        body = {"id": serial, "type": "message", "object": "realtime.item",
                "status": "completed", "role": role, "content": content}
        item = _Item(serial, text_tokens, audio_tokens, body)
        previous = self._previous(item)
        self._items.append(item)
        self._emit(None, 0, {"type": "conversation.item.added", "previous_item_id": previous,
                             "item": body})
        self._emit(None, 0, {"type": "conversation.item.done", "previous_item_id": previous,
                             "item": body})
        return item

    def _previous(self, item: _Item) -> str | None:
        earlier = [i.id for i in self._items if i.id != item.id]
        return earlier[-1] if earlier else None

    def _text_tokens(self, content: list[Any]) -> int:
        return sum(len(self._tokenize(part.get("text") or part.get("transcript") or ""))
                   for part in content if isinstance(part, dict))

    def _error(self, code: str, message: str, event_id: Any) -> None:
        self._emit(None, 0, {"type": "error", "error": {
            "type": "invalid_request_error", "code": code, "message": message, "param": None,
            "event_id": event_id}})

    # The outbox: events in order, paced, paused with the caller's transport ---------------

    def _id(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}_demo{self._serial:08d}"

    def _emit(self, response_id: str | None, delay: float, event: dict[str, Any]) -> None:
        self._outbox.append((response_id, delay, event))
        if self._timer is None:
            self._timer = self._clock.callLater(0, self._pump)

    def _pump(self) -> None:
        self._timer = None
        while self._outbox and not self._paused and not self._closed:
            response_id, delay, event = self._outbox[0]
            if delay:
                self._outbox[0] = (response_id, 0, event)
                self._timer = self._clock.callLater(delay, self._pump)
                return
            self._outbox.popleft()
            if event["type"] == "response.done" and self._active == response_id:
                self._active = None
            kind = self._dialect.names.get(event["type"], event["type"])
            if kind is not None:
                self._listener.upstream_message(
                    orjson.dumps({**event, "type": kind, "event_id": self._id("event")}), False)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@attrs.frozen
class _Dialect:
    """What differs between the GA and the beta Realtime interfaces, as the demo speaks them."""

    #: The session object a new session starts with (id, model, intent, expires_at).
    session: Callable[[str, str, str, int], dict[str, Any]]
    #: Where the session and ``response.create`` keep the output modalities and token limit.
    fields: dict[str, str]
    #: The input transcription settings in a session.
    transcription: Callable[[dict[str, Any]], Any]
    #: The name of a response's modalities field.
    response_modalities: str
    #: Item content types of the assistant's "text" and "audio" parts.
    item_parts: dict[str, str]
    #: Event types renamed on the wire (``None``: not sent).
    names: dict[str, str | None]

    def field(self, options: dict[str, Any], session: dict[str, Any], name: str) -> Any:
        """A ``response.create`` option, else the session's value."""
        key = self.fields[name]
        given = options.get(key)
        return session.get(key) if given is None else given


def _ga_session(serial: str, model: str, intent: str, expires: int) -> dict[str, Any]:
    kind = "transcription" if intent == "transcription" else "realtime"
    return {
        "type": kind, "object": "realtime.session", "id": serial,
        "model": model, "output_modalities": ["audio"], "instructions": "",
        "tools": [], "tool_choice": "auto", "max_output_tokens": "inf",
        "expires_at": expires,
        "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000},
                      "transcription": {"model": "demo"} if kind == "transcription"
                      else None, "turn_detection": None},
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "alloy"},
        },
    }


def _beta_session(serial: str, model: str, intent: str, expires: int) -> dict[str, Any]:
    return {
        "object": "realtime.session", "id": serial, "model": model,
        "modalities": ["text", "audio"], "instructions": "", "voice": "alloy",
        "input_audio_format": "pcm16", "output_audio_format": "pcm16",
        "input_audio_transcription": {"model": "demo"} if intent == "transcription" else None,
        "turn_detection": None, "tools": [], "tool_choice": "auto", "temperature": 0.8,
        "max_response_output_tokens": "inf", "expires_at": expires,
    }


_GA = _Dialect(
    session=_ga_session,
    fields={"modalities": "output_modalities", "limit": "max_output_tokens"},
    transcription=lambda session: session["audio"]["input"].get("transcription"),
    response_modalities="output_modalities",
    item_parts={"text": "output_text", "audio": "output_audio"},
    names={},
)
_BETA = _Dialect(
    session=_beta_session,
    fields={"modalities": "modalities", "limit": "max_response_output_tokens"},
    transcription=lambda session: session.get("input_audio_transcription"),
    response_modalities="modalities",
    item_parts={"text": "text", "audio": "audio"},
    names={
        "conversation.item.added": "conversation.item.created",
        "conversation.item.done": None,
        "response.output_text.delta": "response.text.delta",
        "response.output_text.done": "response.text.done",
        "response.output_audio.delta": "response.audio.delta",
        "response.output_audio.done": "response.audio.done",
        "response.output_audio_transcript.delta": "response.audio_transcript.delta",
        "response.output_audio_transcript.done": "response.audio_transcript.done",
    },
)

_TEXT_DELTAS = ("response.output_audio_transcript.delta", "response.output_text.delta")

_HANDLERS: dict[Any, Callable[[DemoRealtime, dict[str, Any]], None]] = {
    "session.update": DemoRealtime._session_update,
    "input_audio_buffer.append": DemoRealtime._append,
    "input_audio_buffer.commit": DemoRealtime._commit,
    "input_audio_buffer.clear": DemoRealtime._clear,
    "conversation.item.create": DemoRealtime._item_create,
    "conversation.item.retrieve": DemoRealtime._item_retrieve,
    "response.create": DemoRealtime._response_create,
    "response.cancel": DemoRealtime._response_cancel,
}


def _object(payload: bytes) -> dict[str, Any] | None:
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """A session update: nested objects merged, other values replaced."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
