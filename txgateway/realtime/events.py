"""
Looking at realtime events cheaply: the relay reads a frame's ``type`` from its first bytes and
parses whole only the few events accounting needs; audio deltas are never parsed.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

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


def sniff_type(payload: bytes) -> str | None:
    """
    The event's ``type`` when it is visible as a top-level key near the start (OpenAI puts it
    first); None when that cannot be told without parsing.  A ``{`` before the match means it
    may belong to a nested object, so that is not trusted either.
    """
    match = _TYPE.search(payload, 0, _PREFIX)
    if match is None or payload.find(b"{", 1, match.start()) != -1:
        return None
    return match.group(1).decode("ascii")


def parse_event(payload: bytes) -> dict[str, Any] | None:
    """The event as a dict, or None when the frame is not a JSON object."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def event_type(payload: bytes) -> tuple[str | None, dict[str, Any] | None]:
    """
    The frame's type, with the parsed event when the frame was parsed: accounted events
    always are (to confirm the type and read them), and frames whose type cannot be sniffed.
    """
    kind = sniff_type(payload)
    if kind is not None and kind not in ACCOUNTED:
        return kind, None
    event = parse_event(payload)
    if event is None:
        return None, None
    kind = event.get("type")
    return (kind if isinstance(kind, str) else None), event


def base64_length(payload: bytes, key: bytes) -> int:
    """The length of the string value of ``key`` (base64 audio), found without parsing."""
    start = payload.find(key)
    if start == -1:
        return 0
    start = payload.find(b'"', start + len(key))
    if start == -1:
        return 0
    end = payload.find(b'"', start + 1)
    return 0 if end == -1 else end - start - 1


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
