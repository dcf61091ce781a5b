"""
The provider seam: what a provider plugin gives the gateway.

A provider plugin is a module or a package in the ``txgateway.plugins`` package holding (in
the package's ``__init__``) an object that provides both `twisted.plugin.IPlugin` and
`IProviderPlugin`; a package keeps its own wire code beside it (``plugins/bedrock/``).
Beyond `IProvider`, the hooks a provider offers are the narrower interfaces it declares.
The core never imports a plugin by name; `txgateway.providers.registry` finds them with
``getPlugins``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import Attribute, Interface, implementer


@attrs.frozen
class ProviderContext:
    """What the gateway lends a provider it builds."""

    #: The reactor (an ``IReactorTime`` at least), for timers.
    reactor: IReactorTime
    #: The gateway's pooled HTTP ``IAgent``, for providers that call out over the network.
    http_agent: IAgent


@attrs.frozen
class ApiCall:
    """
    One call of an API family, as the caller's endpoint prepared it for a provider.

    ``body`` is the request already in the OpenAI wire format with the upstream model in it,
    ready to send to an OpenAI-compatible server as it is; ``parsed`` is the same request as
    a dict for providers that translate it.
    """

    api: str
    body: bytes
    parsed: dict
    model: str
    stream: bool
    #: Caller headers (lower-case names) a provider of the caller's own dialect may forward,
    #: e.g. ``anthropic-beta`` on the Messages fast path.  Shared and empty for the rest.
    headers: Mapping[str, str] = MappingProxyType({})


@attrs.frozen
class UpstreamRequest:
    """An HTTP request ready to be sent through a provider's agent."""

    method: bytes
    url: bytes
    headers: Headers
    #: Bytes, an upload streamed as it arrives, or None for no body.
    body: bytes | IBodyProducer | None


@attrs.frozen
class RealtimeTarget:
    """
    Where a realtime session is relayed: a WebSocket URL with the provider's own credentials
    in ``headers`` (the caller's key is never forwarded) and the subprotocols to offer.

    A provider that serves realtime sessions itself, with no network (the demo), gives
    ``local`` instead: called with the relay's upstream listener, it returns the connected
    in-memory peer (see `txgateway.realtime.peer`).
    """

    url: str
    headers: Mapping[str, str] = attrs.field(factory=dict)
    protocols: tuple[str, ...] = ()
    local: Callable[[Any], Any] | None = None


def json_request_headers(headers: Mapping[str, str]) -> Headers:
    """
    The headers of a provider's JSON requests: content type, user agent, then ``headers``
    (credentials and the config's extras; empty values are left out).  Built once per
    provider and shared by its requests: the agent copies headers before adding its own.
    """
    built = Headers({b"content-type": [b"application/json"], b"user-agent": [b"txgateway"]})
    for header, value in headers.items():
        if value:
            built.setRawHeaders(header.encode(), [value.encode()])
    return built


class IProvider(Interface):
    """A configured provider instance: where and how a call is sent."""

    name = Attribute("The instance name from the config, e.g. 'openai'.")
    kind = Attribute("The plugin's name, reported as gen_ai.provider.name, e.g. 'openai'.")
    agent = Attribute(
        "The IAgent that carries this provider's requests: the gateway's pooled HTTP agent for "
        "network providers, or a local one.  Its answers are in the OpenAI wire format."
    )
    apis = Attribute(
        "The API families served, a frozenset such as {'chat'}.  'files' and 'batches' are "
        "the provider's own OpenAI-shaped files and batches APIs: for them ``build_request`` "
        "gives the collection's URL (``.../files``), under which each object's path lies."
    )

    def build_request(call: ApiCall) -> UpstreamRequest:  # noqa: N805 (zope interface)
        """Turn a call into the HTTP request to send."""


class ITranslatingProvider(IProvider):
    """
    A provider whose answers are not in the OpenAI wire format (its ``dialect`` names theirs,
    e.g. "anthropic"): it turns its chat answers into OpenAI's, the internal shape.
    """

    dialect = Attribute("The wire format of the provider's answers, e.g. 'anthropic'.")
    stream_content_type = Attribute(
        "The content type its streams come in (bytes): b'text/event-stream', or e.g. AWS's "
        "b'application/vnd.amazon.eventstream'; an answer of another type is no stream."
    )

    def translate_response(body: bytes, api: str = "chat") -> tuple[bytes, Any]:  # noqa: N805
        """
        A successful answer in OpenAI's format for ``api`` (a chat completion, or for
        "embeddings" an embeddings list with float vectors), and its `Usage` (or None).  For
        "rerank", the one API not in OpenAI's format, the answer is Cohere's v2 rerank shape.
        """

    def translate_error(status: int, body: bytes) -> bytes | None:  # noqa: N805
        """An error answer as an OpenAI error body; None when ``body`` is no error object."""

    def stream_translator(wants_usage: bool) -> Any:  # noqa: N805
        """
        A fresh translator for one stream (`txgateway.web.relay.ITranscoder`): ``feed(bytes)
        -> bytes`` of OpenAI chunks, with ``usage``, ``chunks`` (chunks written), ``error``
        ((type, message) of an error event the upstream sent, or None) and ``complete``
        (``[DONE]`` written) readable as it goes; `txgateway.translate.ToChatChunks` keeps
        them all.
        """


class IModelDialects(ITranslatingProvider):
    """A translating provider whose models answer in different wire formats (Vertex AI)."""

    def dialect_of(model: str) -> str:  # noqa: N805
        """The wire format ``model`` answers in, e.g. 'gemini' or 'anthropic'."""


class IPreparingProvider(IProvider):
    """A provider with an asynchronous step to wait for before ``build_request``."""

    def prepare() -> Any:  # noqa: N805
        """
        A Deferred to await first (minting an OAuth token, the AWS credential chain's first
        lookup), failing with an ``UpstreamError`` when that step fails; or None when ready.
        """


class IRealtimeProvider(IProvider):
    """A provider that serves ``/v1/realtime`` sessions."""

    def realtime_target(model: str | None, intent: str,  # noqa: N805
                        beta: bool) -> RealtimeTarget | None:
        """Where a session for ``model`` is relayed, or None when the model has none."""


class IPassthroughProvider(IProvider):
    """A provider whose own API callers may reach as it is, under ``/p/{name}/...``."""

    passthrough_base = Attribute("The URL ``/p/{name}/`` stands for, e.g. its base_url.")
    passthrough_headers = Attribute(
        "The headers (a mapping of str) sent in place of the caller's credentials; empty "
        "values are left out."
    )


#: The wire formats endpoints speak to callers, as providers name theirs (``dialect``).
OPENAI_WIRE = "openai"
ANTHROPIC_WIRE = "anthropic"


def speaks(provider: IProvider, wire: str, model: str | None = None) -> bool:
    """
    Whether the provider answers (``model``, for `IModelDialects`) in the caller's ``wire``
    format: then the caller's body and the answer pass as they are (the identity codec).
    """
    return dialect(provider, model) == wire


def translating(provider: IProvider, wire: str,
                model: str | None = None) -> ITranslatingProvider | None:
    """The provider as the translator it is when it does not speak ``wire``; else None."""
    if speaks(provider, wire, model):
        return None
    return ITranslatingProvider(provider)


def dialect(provider: IProvider, model: str | None = None) -> str:
    """
    The wire format of a provider's answers: "openai" unless it translates; per ``model``
    for a provider whose models differ (`IModelDialects`).
    """
    if model is not None and IModelDialects.providedBy(provider):
        return provider.dialect_of(model)
    return provider.dialect if ITranslatingProvider.providedBy(provider) else OPENAI_WIRE


def prepare(provider: IProvider) -> Any:
    """What to await before ``build_request``, or None (see `IPreparingProvider`)."""
    return provider.prepare() if IPreparingProvider.providedBy(provider) else None


def realtime_target(provider: IProvider, model: str | None, intent: str,
                    beta: bool) -> RealtimeTarget | None:
    """
    The provider's realtime target, or None when it serves no realtime sessions (it is no
    `IRealtimeProvider`).
    """
    if not IRealtimeProvider.providedBy(provider):
        return None
    return provider.realtime_target(model, intent, beta)


class IProviderPlugin(Interface):
    """The `IPlugin` a provider module exports: makes providers of one kind."""

    name = Attribute("The name the config uses to pick the plugin (``plugin: openai``).")
    settings_type = Attribute(
        "The frozen attrs class a provider's config section is loaded into (strictly)."
    )

    def build(name: str, settings: object, context: ProviderContext) -> IProvider:  # noqa: N805
        """Make the provider instance ``name`` from its loaded settings."""


@implementer(IPlugin, IProviderPlugin)
@attrs.frozen
class ProviderPlugin:
    """
    The usual provider plugin: a name, a settings class, and a provider class built as
    ``provider_type(name, settings, context)``.  A plugin module exports one instance.
    """

    name: str
    settings_type: type
    provider_type: Callable[[str, Any, ProviderContext], IProvider]

    def build(self, name: str, settings: Any, context: ProviderContext) -> IProvider:
        return self.provider_type(name, settings, context)
