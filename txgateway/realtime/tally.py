"""
The per-session token tally: fed every frame of a session, it sums what the provider reported.

Usage arrives in two places (protocols.md §1.8-1.9): each ``response.done`` carries its
response's usage, and each ``conversation.item.input_audio_transcription.completed`` its
transcription's.  Responses are keyed by id, so a repeated event counts once, while parallel
out-of-band and cancelled responses all count; a response that was created but never done is
remembered as unterminated, since no usage will ever come for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from txgateway.realtime.events import (
    AUDIO_DELTA_STARTS,
    AUDIO_DELTAS,
    append_audio_chars,
    base64_length,
    decoded_size,
    event_type,
)
from txgateway.realtime.frames import unmask

#: Bytes per second of each audio format (GA format types and beta names); pcm is 24 kHz.
AUDIO_RATES = {"audio/pcm": 48000, "pcm16": 48000, "audio/pcmu": 8000, "audio/pcma": 8000,
               "g711_ulaw": 8000, "g711_alaw": 8000}
DEFAULT_RATE = 48000


@attrs.frozen
class RealtimeUsage:
    """Tokens of a realtime session (or of one event), by direction, modality and caching."""

    input_tokens: int = 0
    output_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    input_image_tokens: int = 0
    input_cached_tokens: int = 0
    cached_text_tokens: int = 0
    cached_audio_tokens: int = 0
    cached_image_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    transcription_input_tokens: int = 0
    transcription_output_tokens: int = 0
    transcription_seconds: float = 0.0
    #: A Live session's billed seconds, as the provider reports them, and the paused
    #: (standby) part of them where it says.
    live_seconds: float = 0.0
    live_paused_seconds: float = 0.0

    def __add__(self, other: RealtimeUsage) -> RealtimeUsage:
        return RealtimeUsage(*(a + b for a, b in zip(
            attrs.astuple(self), attrs.astuple(other), strict=True)))

    @property
    def transcription_tokens(self) -> int:
        return self.transcription_input_tokens + self.transcription_output_tokens

    @property
    def total_tokens(self) -> int:
        """What a token budget counts: realtime and transcription tokens alike."""
        return self.input_tokens + self.output_tokens + self.transcription_tokens

    def token_counts(self) -> Iterator[tuple[str, str, bool, int]]:
        """(direction, modality, cached, tokens) of the realtime model's tokens, non-zero only."""
        for modality, tokens, cached in (
            ("text", self.input_text_tokens, self.cached_text_tokens),
            ("audio", self.input_audio_tokens, self.cached_audio_tokens),
            ("image", self.input_image_tokens, self.cached_image_tokens),
        ):
            yield from _nonzero(("input", modality, False, max(tokens - cached, 0)),
                                ("input", modality, True, cached))
        yield from _nonzero(("output", "text", False, self.output_text_tokens),
                            ("output", "audio", False, self.output_audio_tokens))

    def as_json(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "input_text_tokens": self.input_text_tokens,
            "input_audio_tokens": self.input_audio_tokens,
            "input_image_tokens": self.input_image_tokens,
            "input_cached_tokens": self.input_cached_tokens,
            "input_cached_text_tokens": self.cached_text_tokens,
            "input_cached_audio_tokens": self.cached_audio_tokens,
            "input_cached_image_tokens": self.cached_image_tokens,
            "output_text_tokens": self.output_text_tokens,
            "output_audio_tokens": self.output_audio_tokens,
            "transcription_tokens": self.transcription_tokens,
            "transcription_input_tokens": self.transcription_input_tokens,
            "transcription_output_tokens": self.transcription_output_tokens,
            "transcription_seconds": self.transcription_seconds,
            "live_seconds": self.live_seconds,
            "live_paused_seconds": self.live_paused_seconds,
        }


def _nonzero(*rows: tuple[str, str, bool, int]) -> Iterator[tuple[str, str, bool, int]]:
    return (row for row in rows if row[3])


NO_USAGE = RealtimeUsage()


def response_usage(usage: Any) -> RealtimeUsage:
    """A ``response.done`` usage object read leniently: missing or odd fields count as 0."""
    if not isinstance(usage, dict):
        return NO_USAGE
    details = _dict(usage.get("input_token_details"))
    cached_details = _dict(details.get("cached_tokens_details"))
    output = _dict(usage.get("output_token_details"))
    cached = _int(details.get("cached_tokens"))
    cached_audio = _int(cached_details.get("audio_tokens"))
    cached_image = _int(cached_details.get("image_tokens"))
    # Without a split (some beta servers), cached tokens are taken as text.
    cached_text = max(_int(cached_details.get("text_tokens")),
                      cached - cached_audio - cached_image)
    return RealtimeUsage(
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
        input_text_tokens=_int(details.get("text_tokens")),
        input_audio_tokens=_int(details.get("audio_tokens")),
        input_image_tokens=_int(details.get("image_tokens")),
        input_cached_tokens=cached,
        cached_text_tokens=cached_text,
        cached_audio_tokens=cached_audio,
        cached_image_tokens=cached_image,
        output_text_tokens=_int(output.get("text_tokens")),
        output_audio_tokens=_int(output.get("audio_tokens")),
    )


def transcription_usage(usage: Any) -> RealtimeUsage:
    """Transcription usage: the token form or the duration form (whisper-style models)."""
    if not isinstance(usage, dict):
        return NO_USAGE
    if usage.get("type") == "duration":
        seconds = usage.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
            seconds = 0.0
        return RealtimeUsage(transcription_seconds=float(seconds))
    return RealtimeUsage(transcription_input_tokens=_int(usage.get("input_tokens")),
                         transcription_output_tokens=_int(usage.get("output_tokens")))


def _seconds(value: Any) -> float | None:
    return (float(value) if isinstance(value, int | float) and not isinstance(value, bool)
            else None)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


class SessionTally:
    """
    One session's counts.  `client_frame` and `server_frame` are called with every frame;
    `server_frame` returns the usage that frame added (`NO_USAGE` for most), so callers can
    feed live metrics and budgets.
    """

    def __init__(self, started: float) -> None:
        self.started = started
        self.ended: float | None = None
        self.usage = NO_USAGE
        self.bytes_in = self.bytes_out = 0
        self.frames_in = self.frames_out = 0
        self.audio_seconds_in = self.audio_seconds_out = 0.0
        self.responses: dict[str, str] = {}
        self.errors = 0
        self.upstream_session_id: str | None = None
        self.upstream_model: str | None = None
        #: The input transcription model the session was configured with, for its price.
        self.transcription_model: str | None = None
        self._open: set[str] = set()
        self._transcribed: set[tuple[Any, Any]] = set()
        self._rate_in = self._rate_out = DEFAULT_RATE

    @property
    def unterminated(self) -> list[str]:
        """Responses created but never done: their usage never arrived."""
        return sorted(self._open)

    @property
    def open_responses(self) -> bool:
        return bool(self._open)

    def client_frame(self, payload: bytes, is_binary: bool) -> None:
        self.client_message(payload, 0, len(payload), is_binary, None)

    def client_message(self, frame: bytes, start: int, end: int, is_binary: bool,
                       mask: bytes | None) -> None:
        """A caller's message at ``frame[start:end]``, masked with ``mask`` when not None."""
        self.bytes_in += end - start
        self.frames_in += 1
        if not is_binary:
            size = decoded_size(append_audio_chars(unmask(frame, start, end, mask)))
            if size:
                self.audio_seconds_in += size / self._rate_in

    def server_frame(self, payload: bytes, is_binary: bool) -> RealtimeUsage:
        return self.server_message(payload, 0, len(payload), is_binary)

    def server_message(self, frame: bytes, start: int, end: int,
                       is_binary: bool) -> RealtimeUsage:
        """An upstream message at ``frame[start:end]``; the usage it reported."""
        self.bytes_out += end - start
        self.frames_out += 1
        if is_binary:
            return NO_USAGE
        if not frame.startswith(AUDIO_DELTA_STARTS, start, end):
            kind, event = event_type(frame, start, end)
            if kind not in AUDIO_DELTAS:
                return NO_USAGE if event is None else self._accounted(kind, event)
        size = decoded_size(base64_length(frame, b'"delta"', start, end))
        self.audio_seconds_out += size / self._rate_out
        return NO_USAGE

    def _accounted(self, kind: str | None, event: dict[str, Any]) -> RealtimeUsage:
        if kind == "response.created":
            response_id = _dict(event.get("response")).get("id")
            if isinstance(response_id, str) and response_id not in self.responses:
                self._open.add(response_id)
        elif kind == "response.done":
            return self._response_done(_dict(event.get("response")))
        elif kind == "conversation.item.input_audio_transcription.completed":
            key = (event.get("item_id"), event.get("content_index"))
            if key not in self._transcribed:
                self._transcribed.add(key)
                return self._add(transcription_usage(event.get("usage")))
        elif kind in ("session.created", "session.updated", "transcription_session.created",
                      "transcription_session.updated", "session.started"):
            self._session(_dict(event.get("session")))
        elif kind in ("session.usage.updated", "session.closed"):
            return self._live(_dict(event.get("usage")))
        elif kind == "error":
            self.errors += 1
        return NO_USAGE

    def _response_done(self, response: dict[str, Any]) -> RealtimeUsage:
        response_id = response.get("id")
        if not isinstance(response_id, str) or response_id in self.responses:
            return NO_USAGE
        status = response.get("status")
        self.responses[response_id] = status if isinstance(status, str) else "unknown"
        self._open.discard(response_id)
        return self._add(response_usage(response.get("usage")))

    def _live(self, usage: dict[str, Any]) -> RealtimeUsage:
        """
        A Live session's usage is its total so far: it replaces the last report (only the
        increase is added, so live metrics and budgets see increments like any usage).
        """
        seconds, paused = _seconds(usage.get("seconds")), _seconds(usage.get("paused_seconds"))
        if seconds is None:
            return NO_USAGE
        increase = RealtimeUsage(
            live_seconds=max(seconds - self.usage.live_seconds, 0.0),
            live_paused_seconds=max((paused or 0.0) - self.usage.live_paused_seconds, 0.0))
        return self._add(increase) if increase != NO_USAGE else NO_USAGE

    def _add(self, usage: RealtimeUsage) -> RealtimeUsage:
        self.usage = self.usage + usage
        return usage

    def _session(self, session: dict[str, Any]) -> None:
        if isinstance(session.get("id"), str):
            self.upstream_session_id = session["id"]
        if isinstance(session.get("model"), str):
            self.upstream_model = session["model"]
        audio = _dict(session.get("audio"))
        transcription = (_dict(_dict(audio.get("input")).get("transcription"))
                         or _dict(session.get("input_audio_transcription")))
        if isinstance(transcription.get("model"), str):
            self.transcription_model = transcription["model"]
        self._rate_in = _rate(_dict(audio.get("input")).get("format"),
                              session.get("input_audio_format"), self._rate_in)
        self._rate_out = _rate(_dict(audio.get("output")).get("format"),
                               session.get("output_audio_format"), self._rate_out)

    def as_json(self) -> dict[str, Any]:
        statuses: dict[str, int] = {}
        for status in self.responses.values():
            statuses[status] = statuses.get(status, 0) + 1
        return {
            "responses": len(self.responses),
            "response_statuses": statuses,
            "unterminated_responses": self.unterminated,
            "usage": self.usage.as_json(),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "audio_seconds_in": round(self.audio_seconds_in, 3),
            "audio_seconds_out": round(self.audio_seconds_out, 3),
            "upstream_errors": self.errors,
        }


def _rate(ga_format: Any, beta_format: Any, current: int) -> int:
    """The byte rate of a session's audio format, from whichever form the server used."""
    if isinstance(ga_format, dict) and isinstance(ga_format.get("type"), str):
        return AUDIO_RATES.get(ga_format["type"], current)
    if isinstance(beta_format, str):
        return AUDIO_RATES.get(beta_format, current)
    return current
