"""
Realtime sessions with a provider whose realtime server speaks a protocol of its own (Gemini
Live): the caller still speaks OpenAI's, and the provider plugin translates each message.

The core only declares the seam: a provider that is an `IRealtimeTranslator` gives an
`IRealtimeTranslation` per session, and `TranslatedLeg` stands between the session and the
network leg, so the session relays, tallies and guards OpenAI events as with any provider.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from zope.interface import Interface, implementer

from txgateway.config import RealtimeSettings
from txgateway.providers import RealtimeTarget
from txgateway.realtime.legs import ILeg, IUpstreamListener
from txgateway.realtime.upstream import dial


class IRealtimeTranslation(Interface):
    """One session's translation; each method returns the frames it makes, both ways."""

    def opened() -> Iterable[bytes]:  # noqa: N805 (zope interface)
        """OpenAI events for the caller once the upstream is open (``session.created``)."""

    def from_client(payload: bytes, is_binary: bool  # noqa: N805
                    ) -> tuple[Iterable[bytes], Iterable[bytes]]:
        """A caller's event: (messages for the upstream, events answered to the caller)."""

    def from_upstream(payload: bytes, is_binary: bool  # noqa: N805
                      ) -> tuple[Iterable[bytes], Iterable[bytes]]:
        """An upstream message: (messages back to the upstream, events for the caller)."""


class IRealtimeTranslator(Interface):
    """A provider whose realtime server is reached through a translation."""

    def realtime_translation(model: str, intent: str  # noqa: N805
                             ) -> IRealtimeTranslation | None:
        """The session's translation, or None when sessions of ``intent`` are not served."""


@implementer(ILeg, IUpstreamListener)
class TranslatedLeg:
    """The upstream leg as the session sees it: OpenAI events, translated both ways."""

    def __init__(self, translation: Any, listener: Any) -> None:
        self._translation = translation
        self._listener = listener
        self._leg: Any = None

    def attach(self, leg: Any) -> None:
        self._leg = leg
        self._to_caller(self._translation.opened())

    def _to_caller(self, events: Iterable[bytes]) -> None:
        for event in events:
            self._listener.upstream_message(event, False)

    def _to_upstream(self, messages: Iterable[bytes]) -> None:
        for message in messages:
            self._leg.send(message, False)

    # ILeg, for the session --------------------------------------------------------------------

    @property
    def producer(self) -> Any:
        return self._leg.producer

    def send(self, payload: bytes, is_binary: bool) -> None:
        upstream, answers = self._translation.from_client(payload, is_binary)
        self._to_upstream(upstream)
        self._to_caller(answers)

    def close(self, code: int, reason: str) -> None:
        self._leg.close(code, reason)

    def drop(self) -> None:
        self._leg.drop()

    def pause_source(self, producer: Any) -> None:
        self._leg.pause_source(producer)

    # IUpstreamListener, for the network leg -----------------------------------------------------

    def upstream_message(self, payload: bytes, is_binary: bool) -> None:
        upstream, events = self._translation.from_upstream(payload, is_binary)
        self._to_upstream(upstream)
        self._to_caller(events)

    def upstream_closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        self._listener.upstream_closed(was_clean, code, reason)


async def dial_session(reactor: Any, provider: Any, model: str, intent: str,
                       target: RealtimeTarget, listener: Any, settings: RealtimeSettings,
                       connect_timeout: float) -> ILeg:
    """The session's upstream leg: the provider's own, or translated when it is a translator."""
    translation = (provider.realtime_translation(model, intent)
                   if IRealtimeTranslator.providedBy(provider) else None)
    if translation is None:
        return await dial(reactor, target, listener, settings, connect_timeout)
    leg = TranslatedLeg(translation, listener)
    leg.attach(await dial(reactor, target, leg, settings, connect_timeout))
    return leg
