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

from txgateway.accounting import Exchange
from txgateway.dialects.openai_rest import RestRequest, parse_speech, usage_of
from txgateway.providers import ApiCall
from txgateway.routing import Target
from txgateway.upstream import UpstreamCall
from txgateway.usage import Usage
from txgateway.web.forms import FormEndpoint
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.proxy import is_event_stream
from txgateway.web.resource import JSONResource
from txgateway.web.rest import (
    RestEndpoint,
    bytes_relay,
    event_relay,
    start_relayed,
    usage_reader,
)

_read_usage = usage_reader(usage_of)


def read_transcription_usage(answer: Any, seen: Usage | None) -> Usage | None:
    """The reported usage; for older answers without one, verbose_json's ``duration``."""
    usage = _read_usage(answer, seen)
    if usage is None and isinstance(answer, dict):
        duration = answer.get("duration")
        if isinstance(duration, int | float):
            usage = Usage(audio_seconds=float(duration))
    return usage


class Speech(RestEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Turn text into speech", "SpeechRequest", "application/octet-stream")})
    route = "speech"
    api = "speech"
    parse = staticmethod(parse_speech)

    async def proxy(self, request: Any, exchange: Exchange, speech: RestRequest,
                    target: Target, call: UpstreamCall) -> None:
        self.served(exchange.model, target)
        provider = target.provider
        response = await call.send(provider.agent, provider.build_request(ApiCall(
            api="speech", body=speech.upstream_body(target.model), parsed=speech.parsed,
            model=target.model, stream=speech.stream)))
        if response.code != 200:
            exchange.first_byte = self._gateway.reactor.seconds()
            body = await call.read(response)
            self.answer_error(request, exchange, response, call, body)
            return
        start_relayed(request, response)
        exchange.status = 200
        if is_event_stream(response):
            relay = event_relay(self._gateway, request, exchange, call, _read_usage,
                                len(speech.raw))
        else:
            relay = bytes_relay(self._gateway, request, exchange, call, len(speech.raw))
        call.deliver(response, relay)
        await relay.done


class Transcriptions(FormEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation("Transcribe audio", "form")})
    route = "transcriptions"
    api = "transcriptions"
    read_usage = staticmethod(read_transcription_usage)


class Translations(FormEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation("Translate audio into English", "form")})
    route = "translations"
    api = "translations"
    read_usage = staticmethod(read_transcription_usage)


def audio_tree(gateway: Any) -> JSONResource:
    """``audio`` with ``speech``, ``transcriptions`` and ``translations``, under a ``v1``."""
    audio = JSONResource()
    audio.putChild(b"speech", Speech(gateway))
    audio.putChild(b"transcriptions", Transcriptions(gateway))
    audio.putChild(b"translations", Translations(gateway))
    return audio
