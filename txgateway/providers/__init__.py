"""
The provider seam: what a provider plugin gives the gateway.

A provider plugin is a module in the ``txgateway.plugins`` package holding an object that
provides both `twisted.plugin.IPlugin` and `IProviderPlugin`.  The core never imports a plugin
by name; `txgateway.providers.registry` finds them with ``getPlugins``.
"""

from __future__ import annotations

import attrs
from twisted.web.http_headers import Headers
from zope.interface import Attribute, Interface


@attrs.frozen
class ProviderContext:
    """What the gateway lends a provider it builds."""

    #: The reactor (an ``IReactorTime`` at least), for timers.
    reactor: object
    #: The gateway's pooled HTTP ``IAgent``, for providers that call out over the network.
    http_agent: object


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


@attrs.frozen
class UpstreamRequest:
    """An HTTP request ready to be sent through a provider's agent."""

    method: bytes
    url: bytes
    headers: Headers
    body: bytes


class IProvider(Interface):
    """A configured provider instance: where and how a call is sent."""

    name = Attribute("The instance name from the config, e.g. 'openai'.")
    kind = Attribute("The plugin's name, reported as gen_ai.provider.name, e.g. 'openai'.")
    agent = Attribute(
        "The IAgent that carries this provider's requests: the gateway's pooled HTTP agent for "
        "network providers, or a local one.  Its answers are in the OpenAI wire format."
    )
    apis = Attribute("The API families served, a frozenset such as {'chat'}.")

    def build_request(call: ApiCall) -> UpstreamRequest:  # noqa: N805 (zope interface)
        """Turn a call into the HTTP request to send."""


class IProviderPlugin(Interface):
    """The `IPlugin` a provider module exports: makes providers of one kind."""

    name = Attribute("The name the config uses to pick the plugin (``plugin: openai``).")
    settings_type = Attribute(
        "The frozen attrs class a provider's config section is loaded into (strictly)."
    )

    def build(name: str, settings: object, context: ProviderContext) -> IProvider:  # noqa: N805
        """Make the provider instance ``name`` from its loaded settings."""
