"""
``POST /v1/audio/speech``, ``/v1/audio/transcriptions`` and ``/v1/audio/translations``.

Speech comes back as the upstream sends it: audio bytes relayed chunk by chunk as they arrive
(backpressure, the upstream's content type kept), or SSE with ``stream_format: "sse"``.
Transcriptions and translations are multipart forms sent upstream as they arrive
(`txgateway.web.forms`); their usage is in tokens (gpt-4o-transcribe, streamed ones in
``transcript.text.done``) or in seconds of audio (whisper: ``usage: {type: "duration"}``).
"""

from __future__ import annotations

from typing import Any

from txgateway.dialects.openai_rest import parse_speech
from txgateway.usage import Usage
from txgateway.web.forms import FormCodec, FormEndpoint
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import JSONResource
from txgateway.web.rest import PassingRest, read_openai_usage, served_by
from txgateway.web.runner import CallEndpoint


def read_transcription_usage(answer: Any, seen: Usage | None) -> Usage | None:
    """The reported usage; for older answers without one, verbose_json's ``duration``."""
    usage = read_openai_usage(answer, seen)
    if usage is None and isinstance(answer, dict):
        duration = answer.get("duration")
        if isinstance(duration, int | float):
            usage = Usage(audio_seconds=float(duration))
    return usage


class Speech(CallEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Turn text into speech", "SpeechRequest", "application/octet-stream")})
    route = "speech"
    parse = staticmethod(parse_speech)
    codec = staticmethod(served_by(PassingRest("speech", read_openai_usage)))


class Transcriptions(FormEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation("Transcribe audio", "form")})
    route = "transcriptions"
    codec = staticmethod(served_by(FormCodec("transcriptions", read_transcription_usage)))


class Translations(FormEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation("Translate audio into English", "form")})
    route = "translations"
    codec = staticmethod(served_by(FormCodec("translations", read_transcription_usage)))


def audio_tree(gateway: Any) -> JSONResource:
    """``audio`` with ``speech``, ``transcriptions`` and ``translations``, under a ``v1``."""
    audio = JSONResource()
    audio.putChild(b"speech", Speech(gateway))
    audio.putChild(b"transcriptions", Transcriptions(gateway))
    audio.putChild(b"translations", Translations(gateway))
    return audio
