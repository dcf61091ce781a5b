"""
OpenAI Realtime over Gemini Live: a caller speaking the OpenAI Realtime protocol reaches a
Gemini Live model through its ``BidiGenerateContent`` WebSocket.

Gemini takes one ``setup`` first, so it is sent at the caller's first event, built from it
when that is a ``session.update`` (instructions, voice, tools, modalities, transcription).
Audio is pcm16 both ways: the caller's 24 kHz is resampled to the 16 kHz Gemini takes, and
Gemini's answer (24 kHz) to the caller's rate where they differ.  Each model turn is one
OpenAI response; its ``response.done`` carries the turn's ``usageMetadata`` by modality, so
the relay tallies and bills it as any realtime usage.  A turn ended before its usage came
(Gemini may send it after ``turnComplete``) is done when the usage arrives.
"""

from __future__ import annotations

import array
import base64
import binascii
from collections.abc import Iterable
from typing import Any

import orjson
from zope.interface import implementer

from txgateway.dialects.openai import loads_object
from txgateway.realtime.translated import IRealtimeTranslation

#: pcm16 rates: OpenAI's sessions, what Gemini Live takes, and what it answers unless it says.
CALLER_RATE = 24000
GEMINI_INPUT_RATE = 16000
GEMINI_OUTPUT_RATE = 24000
_MODALITIES = {"TEXT": "text", "AUDIO": "audio", "IMAGE": "image", "VIDEO": "image"}


def resample(pcm: bytes, source: int, target: int) -> bytes:
    """Mono pcm16 from ``source`` Hz to ``target`` Hz, by linear interpolation."""
    if source == target or len(pcm) < 2:
        return pcm
    samples = array.array("h", pcm[:len(pcm) - len(pcm) % 2])
    count = len(samples) * target // source
    step = source / target
    last = len(samples) - 1
    out = array.array("h", bytes(2 * count))
    for index in range(count):
        position = index * step
        left = int(position)
        right = min(left + 1, last)
        fraction = position - left
        out[index] = int(samples[left] + (samples[right] - samples[left]) * fraction)
    return out.tobytes()


def _rate(mime_type: Any) -> int:
    """The rate of an ``audio/pcm;rate=24000`` MIME type (Gemini's output rate if unsaid)."""
    if isinstance(mime_type, str):
        for parameter in mime_type.split(";")[1:]:
            name, _, value = parameter.strip().partition("=")
            if name == "rate" and value.isdigit():
                return int(value)
    return GEMINI_OUTPUT_RATE


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def openai_usage(metadata: dict[str, Any]) -> dict[str, Any]:
    """Gemini's ``usageMetadata`` as a ``response.done`` usage, by modality."""
    details: dict[str, dict[str, int]] = {"input": {}, "output": {}, "cached": {}}
    for side, key in (("input", "promptTokensDetails"), ("output", "responseTokensDetails"),
                      ("input", "toolUsePromptTokensDetails"),
                      ("cached", "cacheTokensDetails")):
        for entry in map(_dict, metadata.get(key) or ()):
            modality = _MODALITIES.get(str(entry.get("modality")), "text")
            counts = details[side]
            counts[modality] = counts.get(modality, 0) + _count(entry.get("tokenCount"))
    # Tool-use prompt tokens are input; thoughts are output text (billed as output).
    thoughts = _count(metadata.get("thoughtsTokenCount"))
    input_tokens = (_count(metadata.get("promptTokenCount"))
                    + _count(metadata.get("toolUsePromptTokenCount")))
    output_tokens = _count(metadata.get("responseTokenCount")) + thoughts
    output = details["output"]
    if not output and output_tokens:
        output = {"text": output_tokens}
    elif thoughts:
        output["text"] = output.get("text", 0) + thoughts
    inputs = details["input"] or ({"text": input_tokens} if input_tokens else {})
    cached = details["cached"]
    return {
        "total_tokens": input_tokens + output_tokens,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "input_token_details": {
            "text_tokens": inputs.get("text", 0), "audio_tokens": inputs.get("audio", 0),
            "image_tokens": inputs.get("image", 0),
            "cached_tokens": _count(metadata.get("cachedContentTokenCount")),
            "cached_tokens_details": {"text_tokens": cached.get("text", 0),
                                      "audio_tokens": cached.get("audio", 0),
                                      "image_tokens": cached.get("image", 0)}},
        "output_token_details": {"text_tokens": output.get("text", 0),
                                 "audio_tokens": output.get("audio", 0)},
    }


def setup_message(model: str, session: dict[str, Any]) -> dict[str, Any]:
    """
    Gemini's ``setup`` for an OpenAI session config (GA or beta field names); ``model`` is
    the resource name (``models/...``, or Vertex AI's ``projects/.../models/...``).
    """
    audio = _dict(session.get("audio"))
    output = _dict(audio.get("output"))
    modalities = session.get("output_modalities") or session.get("modalities") or ["audio"]
    speaks = "audio" in modalities
    config: dict[str, Any] = {"responseModalities": ["AUDIO" if speaks else "TEXT"]}
    voice = output.get("voice") or session.get("voice")
    if speaks and isinstance(voice, str):
        config["speechConfig"] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": voice}}}
    setup: dict[str, Any] = {"model": model, "generationConfig": config}
    if isinstance(session.get("instructions"), str):
        setup["systemInstruction"] = {"parts": [{"text": session["instructions"]}]}
    functions = [{key: tool[key] for key in ("name", "description", "parameters") if key in tool}
                 for tool in session.get("tools") or () if _dict(tool).get("type") == "function"]
    if functions:
        setup["tools"] = [{"functionDeclarations": functions}]
    if (_dict(audio.get("input")).get("transcription")
            or session.get("input_audio_transcription")):
        setup["inputAudioTranscription"] = {}
    if speaks:
        setup["outputAudioTranscription"] = {}
    return {"setup": setup}


@implementer(IRealtimeTranslation)
class GeminiLive:
    """One session's translation, OpenAI Realtime (GA) on the caller's side."""

    def __init__(self, model: str, resource: str | None = None) -> None:
        self._model = model
        #: The model's resource name in the setup.
        self._resource = resource or "models/" + model.removeprefix("models/")
        self._serial = 0
        self._set_up = False
        self._updated: dict[str, Any] | None = None
        #: User text items waiting for a ``response.create`` (Gemini's turn completion).
        self._turns: list[dict[str, Any]] = []
        #: Names of the function calls asked for, by call id (Gemini's tool response needs it).
        self._calls: dict[str, str] = {}
        #: The response being played, its output so far, and the last usage reported for it.
        self._response: str | None = None
        self._item: str | None = None
        self._output: list[dict[str, Any]] = []
        self._transcript: list[str] = []
        self._usage: dict[str, Any] | None = None
        #: A finished response waiting for its usage: its status and details.
        self._finished: tuple[str, dict[str, Any] | None] | None = None
        self._heard: str | None = None
        self._heard_text: list[str] = []

    def _id(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}_gl{self._serial}"

    def _event(self, kind: str, **fields: Any) -> bytes:
        return orjson.dumps({"type": kind, "event_id": self._id("event"), **fields})

    def opened(self) -> Iterable[bytes]:
        return [self._event("session.created", session=self._session({}))]

    def _session(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"type": "realtime", "object": "realtime.session", "id": "sess_gemini_live",
                "model": self._model, "output_modalities": ["audio"],
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": CALLER_RATE}},
                          "output": {"format": {"type": "audio/pcm", "rate": CALLER_RATE}}},
                **config}

    # The caller's events ------------------------------------------------------------------

    def from_client(self, payload: bytes, is_binary: bool
                    ) -> tuple[list[bytes], list[bytes]]:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return [], [self._error("invalid_json", "The event is not JSON.")]
        if not isinstance(event, dict):
            return [], [self._error("invalid_event", "The event is not an object.")]
        kind = event.get("type")
        upstream: list[bytes] = []
        if not self._set_up:
            self._set_up = True
            config = _dict(event.get("session")) if kind == "session.update" else {}
            upstream.append(orjson.dumps(setup_message(self._resource, config)))
            if kind == "session.update":
                self._updated = config
                return upstream, []
        elif kind == "session.update":
            return [], [self._error("session_update_unsupported",
                                    "Gemini Live takes its configuration once, at the "
                                    "session's first event.")]
        upstream.extend(self._client_event(kind, event))
        return upstream, []

    def _client_event(self, kind: Any, event: dict[str, Any]) -> list[bytes]:
        if kind == "input_audio_buffer.append":
            try:
                pcm = base64.b64decode(event.get("audio") or "", validate=True)
            except (binascii.Error, ValueError):
                return []
            audio = resample(pcm, CALLER_RATE, GEMINI_INPUT_RATE)
            return [orjson.dumps({"realtimeInput": {"audio": {
                "data": base64.b64encode(audio).decode(),
                "mimeType": f"audio/pcm;rate={GEMINI_INPUT_RATE}"}}})]
        if kind == "conversation.item.create":
            item = _dict(event.get("item"))
            if item.get("type") == "function_call_output":
                call_id = str(item.get("call_id"))
                return [orjson.dumps({"toolResponse": {"functionResponses": [{
                    "id": call_id, "name": self._calls.pop(call_id, ""),
                    "response": {"output": item.get("output")}}]}})]
            texts = [part.get("text") for part in item.get("content") or ()
                     if _dict(part).get("type") in ("input_text", "text")]
            parts = [{"text": text} for text in texts if isinstance(text, str)]
            if parts:
                role = "model" if item.get("role") == "assistant" else "user"
                self._turns.append({"role": role, "parts": parts})
            return []
        if kind == "response.create" and self._turns:
            turns, self._turns = self._turns, []
            return [orjson.dumps({"clientContent": {"turns": turns, "turnComplete": True}})]
        # Commits and cancels have no Gemini message: its voice activity detection commits,
        # and the caller's speech interrupts.
        return []

    def _error(self, code: str, message: str) -> bytes:
        return self._event("error", error={"type": "invalid_request_error", "code": code,
                                           "message": message, "param": None,
                                           "event_id": None})

    # Gemini's messages --------------------------------------------------------------------

    def from_upstream(self, payload: bytes, is_binary: bool
                      ) -> tuple[list[bytes], list[bytes]]:
        message = loads_object(payload)
        if message is None:
            return [], []
        events: list[bytes] = []
        if "setupComplete" in message and self._updated is not None:
            events.append(self._event("session.updated", session=self._session(self._updated)))
        # Usage first: a message may carry it beside the turn's end.
        reported = isinstance(message.get("usageMetadata"), dict)
        if reported:
            self._usage = openai_usage(message["usageMetadata"])
        content = _dict(message.get("serverContent"))
        if content:
            self._content(content, events)
        calls = _dict(message.get("toolCall")).get("functionCalls")
        if calls:
            self._tool_calls(calls, events)
        if reported and self._finished is not None:
            self._done(events)
        return [], events

    def _content(self, content: dict[str, Any], events: list[bytes]) -> None:
        heard = _dict(content.get("inputTranscription")).get("text")
        if isinstance(heard, str) and heard:
            if self._heard is None:
                self._heard = self._id("item")
            self._heard_text.append(heard)
            events.append(self._event("conversation.item.input_audio_transcription.delta",
                                      item_id=self._heard, content_index=0, delta=heard))
        if content.get("interrupted"):
            events.append(self._event("input_audio_buffer.speech_started",
                                      audio_start_ms=0, item_id=self._id("item")))
            if self._playing:
                self._finish("cancelled", {"type": "cancelled", "reason": "turn_detected"},
                             events)
        for part in _dict(content.get("modelTurn")).get("parts") or ():
            self._part(_dict(part), events)
        said = _dict(content.get("outputTranscription")).get("text")
        if isinstance(said, str) and said:
            self._start(events)
            self._transcript.append(said)
            events.append(self._event("response.output_audio_transcript.delta",
                                      **self._where(), delta=said))
        if content.get("turnComplete") and self._playing:
            self._finish("completed", None, events)

    def _part(self, part: dict[str, Any], events: list[bytes]) -> None:
        inline = _dict(part.get("inlineData"))
        if isinstance(inline.get("data"), str) and str(inline.get("mimeType", "")).startswith(
                "audio/pcm"):
            self._start(events)
            audio = inline["data"]
            rate = _rate(inline.get("mimeType"))
            if rate != CALLER_RATE:
                audio = base64.b64encode(resample(base64.b64decode(audio), rate,
                                                  CALLER_RATE)).decode()
            events.append(self._event("response.output_audio.delta", **self._where(),
                                      delta=audio))
        elif isinstance(part.get("text"), str) and not part.get("thought"):
            self._start(events)
            self._transcript.append(part["text"])
            events.append(self._event("response.output_text.delta", **self._where(),
                                      delta=part["text"]))

    def _tool_calls(self, calls: Any, events: list[bytes]) -> None:
        self._start(events)
        for call in calls:
            call = _dict(call)
            call_id, name = str(call.get("id") or self._id("call")), str(call.get("name"))
            self._calls[call_id] = name
            arguments = orjson.dumps(call.get("args") or {}).decode()
            item = {"id": self._id("item"), "type": "function_call", "status": "completed",
                    "call_id": call_id, "name": name, "arguments": arguments}
            self._output.append(item)
            events.append(self._event("response.function_call_arguments.done",
                                      response_id=self._response, item_id=item["id"],
                                      output_index=len(self._output) - 1, call_id=call_id,
                                      name=name, arguments=arguments))
        # Gemini waits for the tool responses: the response is over, with what usage came.
        self._finish("completed", None, events)
        if self._finished is not None:
            self._done(events)

    @property
    def _playing(self) -> bool:
        return self._response is not None and self._finished is None

    def _where(self) -> dict[str, Any]:
        return {"response_id": self._response, "item_id": self._item,
                "output_index": 0, "content_index": 0}

    def _start(self, events: list[bytes]) -> None:
        """The first output of a model turn opens its response."""
        if self._finished is not None:  # the last turn's usage never came
            self._done(events)
        if self._response is not None:
            return
        if self._heard is not None:
            events.append(self._event(
                "conversation.item.input_audio_transcription.completed", item_id=self._heard,
                content_index=0, transcript="".join(self._heard_text)))
            self._heard, self._heard_text = None, []
        self._response, self._item = self._id("resp"), self._id("item")
        events.append(self._event("response.created", response={
            "id": self._response, "object": "realtime.response", "status": "in_progress",
            "output": []}))

    def _finish(self, status: str, details: dict[str, Any] | None,
                events: list[bytes]) -> None:
        if self._transcript:
            self._output.insert(0, {"id": self._item, "type": "message", "role": "assistant",
                                    "status": "completed" if status == "completed"
                                    else "incomplete",
                                    "content": [{"type": "output_audio",
                                                 "transcript": "".join(self._transcript)}]})
        self._finished = (status, details)
        if self._usage is not None:
            self._done(events)

    def _done(self, events: list[bytes]) -> None:
        status, details = self._finished or ("completed", None)
        events.append(self._event("response.done", response={
            "id": self._response, "object": "realtime.response", "status": status,
            "status_details": details, "output": self._output,
            "usage": self._usage or openai_usage({})}))
        self._response = self._item = self._usage = self._finished = None
        self._output, self._transcript = [], []
