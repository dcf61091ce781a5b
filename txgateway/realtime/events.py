"""
Looking at realtime events cheaply: the relay reads a frame's ``type`` from its first bytes and
parses whole only the few events accounting needs; audio deltas are never parsed.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from txgateway.dialects.openai import loads_object

#: Server events whose whole body the tally reads (GA and beta names).
ACCOUNTED = frozenset({
    "session.created", "session.updated", "transcription_session.created",
    "transcription_session.updated", "response.created", "response.done",
    "conversation.item.input_audio_transcription.completed", "error",
    # Translation and Live sessions (``/v1/realtime/translations``, ``/v1/live/sessions``).
    "session.started", "session.usage.updated", "session.closed",
})
#: Server events carrying base64 output audio (under ``delta``): GA, beta and translation names.
AUDIO_DELTAS = frozenset({"response.output_audio.delta", "response.audio.delta",
                          "session.output_audio.delta"})
#: Client events appending base64 input audio (under ``audio``): realtime and translation.
APPENDS = frozenset({"input_audio_buffer.append", "session.input_audio_buffer.append"})

#: How the audio events start as the SDKs and OpenAI write them: ``type`` first, in compact JSON
#: or with Python's default separators.  A frame starting so is that event, known without the
#: sniff (the bulk of a voice session's frames); any other frame is sniffed.
APPEND_STARTS = (b'{"type":"input_audio_buffer.append"', b'{"type": "input_audio_buffer.append"',
                 b'{"type":"session.input_audio_buffer.append"',
                 b'{"type": "session.input_audio_buffer.append"')
AUDIO_DELTA_STARTS = (
    b'{"type":"response.output_audio.delta"', b'{"type": "response.output_audio.delta"',
    b'{"type":"response.audio.delta"', b'{"type": "response.audio.delta"',
    b'{"type":"session.output_audio.delta"', b'{"type": "session.output_audio.delta"',
)

_TYPE = re.compile(rb'"type"\s*:\s*"([A-Za-z0-9_.]{1,100})"')
#: How far into a frame the top-level ``type`` is looked for before parsing the whole frame.
_PREFIX = 256


def sniff_type(payload: bytes, start: int = 0, end: int | None = None) -> str | None:
    """
    The event's ``type`` when it is visible as a top-level key near the start (OpenAI puts it
    first); None when that cannot be told without parsing.  A ``{`` before the match means it
    may belong to a nested object, so that is not trusted either.  ``start`` and ``end`` bound
    the event inside a larger buffer (a read of the relay), which is never copied.
    """
    end = len(payload) if end is None else end
    match = _TYPE.search(payload, start, min(end, start + _PREFIX))
    if match is None or payload.find(b"{", start + 1, match.start()) != -1:
        return None
    return match.group(1).decode("ascii")


def event_type(payload: bytes, start: int = 0, end: int | None = None
               ) -> tuple[str | None, dict[str, Any] | None]:
    """
    The frame's type, with the parsed event when the frame was parsed: accounted events
    always are (to confirm the type and read them), and frames whose type cannot be sniffed.
    """
    end = len(payload) if end is None else end
    kind = sniff_type(payload, start, end)
    if kind is not None and kind not in ACCOUNTED:
        return kind, None
    event = loads_object(payload if start == 0 and end == len(payload) else payload[start:end])
    if event is None:
        return None, None
    kind = event.get("type")
    return (kind if isinstance(kind, str) else None), event


def base64_length(payload: bytes, key: bytes, start: int = 0, end: int | None = None) -> int:
    """The length of the string value of ``key`` (base64 audio), found without parsing."""
    end = len(payload) if end is None else end
    start = payload.find(key, start, end)
    if start == -1:
        return 0
    start = payload.find(b'"', start + len(key), end)
    if start == -1:
        return 0
    stop = payload.find(b'"', start + 1, end)
    return 0 if stop == -1 else stop - start - 1


def append_audio_chars(payload: bytes) -> int:
    """The base64 characters of audio a client event carries: an append's, else 0."""
    if payload.startswith(APPEND_STARTS) or (
            payload.find(b"input_audio_buffer.append", 0, _PREFIX) != -1
            and event_type(payload)[0] in APPENDS):
        return base64_length(payload, b'"audio"')
    return 0


def decoded_size(base64_chars: int) -> int:
    """Bytes of audio in that many base64 characters (padding ignored)."""
    return base64_chars * 3 // 4


def error_event(code: str, message: str, event_id: str) -> bytes:
    """An ``error`` server event, as OpenAI sends them, from the gateway itself."""
    return orjson.dumps({
        "type": "error", "event_id": event_id,
        "error": {"type": "invalid_request_error", "code": code, "message": message,
                  "param": None, "event_id": None},
    })
