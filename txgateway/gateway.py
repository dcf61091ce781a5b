"""The running gateway's shared parts, built from a config: what request handlers use."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from txgateway.accounting import Accountant
from txgateway.auth import IAuthenticator, OpenGate
from txgateway.config import GatewayConfig
from txgateway.metrics import GatewayMetrics
from txgateway.providers import IProvider, IProviderPlugin, ProviderContext
from txgateway.realtime.session import SessionBook
from txgateway.routing import Router
from txgateway.upstream import pooled_agent


@attrs.define
class Gateway:
    """Everything a request handler needs, in one place."""

    reactor: Any
    config: GatewayConfig
    providers: Mapping[str, IProvider]
    router: Router
    metrics: GatewayMetrics
    accountant: Accountant
    pool: Any
    #: Realtime sessions: admission, the live tally, the admin API's view.
    realtime: SessionBook
    #: Checks callers' keys; open until a key store replaces it.
    authenticator: IAuthenticator = attrs.field(factory=OpenGate)
    #: Set at stop: readiness turns false so load balancers move traffic away.
    draining: bool = False


def build_gateway(
    reactor: Any,
    config: GatewayConfig,
    plugins: Mapping[str, IProviderPlugin],
    access_log: Any,
) -> Gateway:
    """Make the providers the config names and everything that serves requests."""
    agent, pool = pooled_agent(reactor, config.upstream)
    context = ProviderContext(reactor=reactor, http_agent=agent)
    providers = {
        name: plugins[provider.plugin].build(name, provider.settings, context)
        for name, provider in config.providers.items()
    }
    metrics = GatewayMetrics()
    return Gateway(
        reactor=reactor,
        config=config,
        providers=providers,
        router=Router(config.models, providers),
        metrics=metrics,
        accountant=Accountant(reactor, metrics, access_log),
        pool=pool,
        realtime=SessionBook(reactor, config.realtime, metrics, access_log),
    )
