"""The running gateway's shared parts, built from a config: what request handlers use."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.web.iweb import IAgent

from txgateway.accounting import Accountant
from txgateway.auth import KeyAuthenticator
from txgateway.cluster import LocalView
from txgateway.config import ConfigError, GatewayConfig
from txgateway.dialects.redact import Redactor, redactor_of
from txgateway.limits import ILimiter, open_limiter
from txgateway.logs import AccessWriter
from txgateway.metrics import GatewayMetrics
from txgateway.pricing import PriceTable, shipped_table
from txgateway.providers import IProvider, IProviderPlugin, ProviderContext
from txgateway.realtime.session import SessionBook
from txgateway.routing import Router
from txgateway.store import IStore, open_store
from txgateway.store.ledger import Ledger
from txgateway.tracing import TracingAgent, open_tracing
from txgateway.upstream import pooled_agent

#: Settings a reload cannot change: the process must restart for them.
FIXED_AT_START = ("listen", "workers", "store", "limiter", "access_log", "upstream",
                  "plugin_dirs", "tracing", "max_in_flight")


@attrs.define
class Gateway:
    """
    Everything a request handler needs, in one place.  A reload (`reload`) swaps the
    config, providers, router and keys; calls under way keep the ones they started with.
    """

    reactor: Any
    config: GatewayConfig
    plugins: Mapping[str, IProviderPlugin]
    context: ProviderContext
    providers: Mapping[str, IProvider]
    router: Router
    metrics: GatewayMetrics
    accountant: Accountant
    pool: Any
    store: IStore
    ledger: Ledger
    limiter: ILimiter
    prices: PriceTable
    #: Checks callers' keys (open while no key exists).
    authenticator: KeyAuthenticator
    #: Realtime sessions: admission, the live tally, the admin API's view.
    realtime: SessionBook
    #: Set at stop: readiness turns false so load balancers move traffic away.
    draining: bool = False
    #: Reads the config afresh for `reload_from_source`; None when there is no file.
    config_source: Callable[[], GatewayConfig] | None = None
    #: The traces' exporter (`txgateway.tracing.Tracing`); None when tracing is off.
    tracing: Any = None
    #: The gateway as a whole (`txgateway.cluster.IGatewayView`): this process, or every
    #: worker through the parent.
    view: Any = None
    #: Scrubs the config's secrets (and key-shaped strings) from upstream errors.
    redactor: Redactor = Redactor()

    def reload_from_source(self) -> None:
        if self.config_source is None:
            raise ConfigError(["$: this gateway has no config file to reload"])
        self.reload(self.config_source())

    def reload(self, config: GatewayConfig) -> None:
        """
        Serve ``config`` from now on; raises `ConfigError` (and changes nothing) when it
        changes what only a restart can, or names a plugin that is not installed.
        """
        fixed = [f"{name}: changing it needs a restart" for name in FIXED_AT_START
                 if getattr(config, name) != getattr(self.config, name)]
        if fixed:
            raise ConfigError(fixed)
        providers = build_providers(config, self.plugins, self.context)
        authenticator = KeyAuthenticator(self.reactor.seconds, self.store, config.keys)
        authenticator.open = self.authenticator.open and authenticator.open
        self.prices = shipped_table(config.prices)
        self.accountant.prices = self.prices
        self.providers = providers
        self.metrics.provider_kinds = provider_kinds(providers)
        self.router = Router(config.models, providers, config.routing, self.reactor.seconds)
        self.authenticator = authenticator
        self.redactor = redactor_of(config)
        self.realtime.settings = config.realtime
        self.config = config


def build_providers(config: GatewayConfig, plugins: Mapping[str, IProviderPlugin],
                    context: ProviderContext) -> dict[str, IProvider]:
    return {
        name: plugins[provider.plugin].build(name, provider.settings, context)
        for name, provider in config.providers.items()
    }


def provider_kinds(providers: Mapping[str, IProvider]) -> dict[str, str]:
    """Each provider's kind (its plugin) by its name, for the gen_ai metrics' labels."""
    return {name: provider.kind for name, provider in providers.items()}


def build_gateway(
    reactor: Any,
    config: GatewayConfig,
    plugins: Mapping[str, IProviderPlugin],
    access_log: AccessWriter,
    limiter: ILimiter | None = None,
) -> Gateway:
    """
    Make the providers the config names and everything that serves requests; ``limiter``
    replaces the config's (a worker's `txgateway.cluster.ParentLimiter`).
    """
    pooled, pool = pooled_agent(reactor, config.upstream)
    tracing = open_tracing(config.tracing)
    agent: IAgent = pooled if tracing is None else TracingAgent(pooled)
    context = ProviderContext(reactor=reactor, http_agent=agent)
    providers = build_providers(config, plugins, context)
    metrics = GatewayMetrics()
    metrics.provider_kinds = provider_kinds(providers)
    store = open_store(config.store, reactor)
    ledger = Ledger(store, reactor)
    if limiter is None:
        limiter = open_limiter(config.limiter, reactor)
    prices = shipped_table(config.prices)
    accountant = Accountant(reactor, metrics, access_log, ledger, limiter, prices)
    accountant.tracing = tracing
    gateway = Gateway(
        reactor=reactor,
        config=config,
        tracing=tracing,
        redactor=redactor_of(config),
        plugins=plugins,
        context=context,
        providers=providers,
        router=Router(config.models, providers, config.routing, reactor.seconds),
        metrics=metrics,
        accountant=accountant,
        pool=pool,
        store=store,
        ledger=ledger,
        limiter=limiter,
        prices=prices,
        authenticator=KeyAuthenticator(reactor.seconds, store, config.keys),
        realtime=SessionBook(reactor, config.realtime, metrics, access_log,
                             accountant.session_ended),
    )
    gateway.view = LocalView(gateway)
    return gateway
