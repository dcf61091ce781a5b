"""
The gateway's configuration: YAML, with ``${VAR}`` expansion, loaded by cattrs into frozen
attrs classes.

Loading is strict: an unknown key, a wrong type or a missing variable is a `ConfigError` whose
lines name the path of the offending value (``providers.openai.base_url: expected a URL``), so
a typo fails at start instead of being silently ignored.

Each provider's own settings (``base_url``, ``api_key``, ...) are declared by its plugin as an
attrs class; the loader asks the plugin registry for that class and structures the provider's
section into it with the same strict rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal, NewType, get_args, get_origin
from urllib.parse import urlsplit

import attrs
import cattrs
import yaml
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)

from txgateway.pricing import ModelPrice

HttpURL = NewType("HttpURL", str)
"""A string that must be an absolute http(s) URL."""

Seconds = NewType("Seconds", float)
"""A positive duration in seconds."""

#: A number of worker processes: a positive integer, or "auto" (one per CPU core).
Workers = NewType("Workers", int)

#: How long a stopping gateway (each worker of one) lets calls and sessions in flight finish.
DRAIN_SECONDS = 30.0
#: Connections the kernel queues for the gateway to accept, unless ``listen`` says
#: ``backlog=``: Twisted's 50 drops the SYNs of a burst (a thousand voice sessions opening at
#: once), whose clients then retry a second later.
LISTEN_BACKLOG = 1024


class ConfigError(Exception):
    """The configuration is invalid; ``problems`` holds one ``path: message`` line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@attrs.frozen
class UpstreamSettings:
    """How the gateway talks to upstream servers."""

    connect_timeout: Seconds = Seconds(10.0)
    #: Until the response headers arrive.  Non-streaming LLM calls answer only when the whole
    #: generation is done, so this is long by default.
    first_byte_timeout: Seconds = Seconds(600.0)
    #: The longest silence allowed inside a response body once it has started.
    idle_timeout: Seconds = Seconds(120.0)
    #: Idle keep-alive connections kept per upstream host.
    max_idle_connections_per_host: int = 100
    #: The largest non-streaming upstream body the gateway will hold.
    max_response_bytes: int = 64 * 1024 * 1024


@attrs.frozen
class RealtimeSettings:
    """Limits of ``/v1/realtime`` sessions; 0 turns a count limit off."""

    #: Sessions open at once, over all callers and per caller key.
    max_sessions: int = 1000
    max_sessions_per_key: int = 0
    #: A session with no frame either way for this long is closed.
    idle_timeout: Seconds = Seconds(600.0)
    max_duration: Seconds = Seconds(3600.0)
    #: Input plus output tokens (realtime and transcription) one session may use.
    token_budget: int = 0
    #: The largest message either side may send (input audio appends can be 15 MiB).
    max_message_bytes: int = 16 * 1024 * 1024
    #: WebSocket pings toward callers, so idle proxies keep the socket and dead peers are seen.
    ping_interval: Seconds = Seconds(20.0)
    ping_timeout: Seconds = Seconds(20.0)
    #: A caller that reads nothing for this long while the relay waits on it is dropped.
    slow_client_timeout: Seconds = Seconds(10.0)
    #: A caller that leaves while responses run: the upstream is kept this long for their usage.
    drain_timeout: Seconds = Seconds(5.0)
    #: The model routed for ``?intent=transcription`` sessions that name none.
    transcription_model: str = "gpt-4o-transcribe"
    #: The model routed for ``/v1/live/sessions`` that name none in the query (the openai
    #: SDK names it only in ``session.start``).
    live_model: str = "gpt-live-1.1"


@attrs.frozen
class AdminSettings:
    """The admin API; off while ``token`` is empty."""

    token: str = ""


@attrs.frozen
class TracingSettings:
    """OpenTelemetry traces, exported over OTLP/HTTP; off (and free) while no endpoint is set."""

    #: The collector's traces URL, e.g. ``http://127.0.0.1:4318/v1/traces``.
    otlp_endpoint: str = ""
    #: Headers sent with each export (a collector's API key, say).
    headers: dict[str, str] = attrs.field(factory=dict)
    service_name: str = "txgateway"
    #: The share of traces kept when the caller sent no sampled ``traceparent``.
    sample_ratio: float = 1.0


@attrs.frozen
class ProviderConfig:
    """One provider instance: which plugin serves it and that plugin's settings."""

    plugin: str
    settings: Any
    enabled: bool = True


@attrs.frozen
class RouteTarget:
    """One provider (and its model name) a route may send a call to."""

    provider: str
    #: The upstream model name; by default the name the caller asked for.
    model: str | None = None
    #: Share of the calls among targets of the same priority.
    weight: float = 1.0
    #: Lower priorities are tried first; higher ones only as fallbacks.
    priority: int = 0


@attrs.frozen
class ModelRoute:
    """
    Routes callers' model name (or glob, ``*`` for any) to a provider's model, or to several
    ``targets`` balanced by weight and tried in turn when one fails.
    """

    name: str
    provider: str | None = None
    #: The upstream model name; by default the name the caller asked for.
    model: str | None = None
    targets: tuple[RouteTarget, ...] = ()

    def all_targets(self) -> tuple[RouteTarget, ...]:
        """``targets``, or the one target ``provider`` and ``model`` name."""
        if self.targets:
            return self.targets
        return (RouteTarget(provider=self.provider or "", model=self.model),)


@attrs.frozen
class RoutingSettings:
    """How calls fall back between a route's targets."""

    #: Attempts again on the same target (after connect errors, timeouts, 429 and 5xx before
    #: the first byte) before moving on to the next.
    retries: int = 0
    #: The wait before the first retry on a target, doubled for each further one (each wait
    #: jittered between half and one and a half times that, so retries do not come in waves).
    retry_backoff: Seconds = Seconds(0.25)
    #: The longest ``Retry-After`` a retry waits for: a target that asks for longer is left
    #: for the next one (or, when none is left, its answer goes to the caller).
    max_retry_after: Seconds = Seconds(1.0)
    #: Consecutive failures after which a target cools down (is tried only as a last resort).
    failures_before_cooldown: int = 3
    #: How long a target cools down before one call probes it again.
    cooldown: Seconds = Seconds(30.0)


@attrs.frozen
class KeyConfig:
    """A virtual key declared in the config: its secret (or its sha256) and what it may do."""

    name: str
    #: The secret callers send; or give ``hash`` (sha256 hex) to keep it out of the file.
    key: str = ""
    hash: str = ""
    #: Globs of the models the key may call; empty for all.
    models: tuple[str, ...] = ()
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    budget_usd: float = 0.0
    budget_period: Literal["day", "month", "total"] = "month"
    metadata: dict[str, str] = attrs.field(factory=dict)


def with_backlog(listen: str) -> str:
    """A ``tcp``, ``tcp6`` or ``unix`` endpoint, its backlog `LISTEN_BACKLOG` unless it says."""
    kind = listen.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "unix") or ":backlog=" in listen:
        return listen
    return f"{listen}:backlog={LISTEN_BACKLOG}"


@attrs.frozen
class GatewayConfig:
    """The whole configuration of one gateway process."""

    providers: Mapping[str, ProviderConfig]
    models: tuple[ModelRoute, ...]
    listen: str = "tcp:4000:interface=127.0.0.1"
    #: Largest request body accepted (413 beyond it).
    max_body_bytes: int = 10 * 1024 * 1024
    #: Calls under way at once; past it a new one gets 503 with Retry-After (0: no limit).
    max_in_flight: int = 10000
    #: Where the one-JSON-line-per-request access log goes: "-" for stdout, a path, or "off".
    access_log: str = "-"
    #: Extra directories searched for provider plugins.
    plugin_dirs: tuple[str, ...] = ()
    upstream: UpstreamSettings = UpstreamSettings()
    routing: RoutingSettings = RoutingSettings()
    realtime: RealtimeSettings = RealtimeSettings()
    admin: AdminSettings = AdminSettings()
    tracing: TracingSettings = TracingSettings()
    #: Worker processes accepting on the one listening socket (`txgateway.workers`).
    workers: Workers = Workers(1)
    #: Where usage records and keys are kept: ``sqlite:PATH`` or ``postgresql://...``.
    store: str = "sqlite:txgateway.db"
    #: Where rate limits and budgets are counted: ``memory`` (one process) or ``redis://...``.
    limiter: str = "memory"
    #: Virtual keys declared here (more are made through the admin API).
    keys: tuple[KeyConfig, ...] = ()
    #: Prices per model name, over the shipped table's (USD per million tokens).
    prices: dict[str, ModelPrice] = attrs.field(factory=dict)


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\+)([^}]*))?\}")


def expand_environment(value: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """
    Replace ``${VAR}``, ``${VAR:-default}`` and ``${VAR:+alternative}`` in every string.

    Expansion happens after YAML parsing, so a variable's value can never change the
    document's structure.
    """
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, operator, word = match.group(1), match.group(2), match.group(3)
            current = environ.get(name, "")
            if operator == ":-":
                return current or word
            if operator == ":+":
                return word if current else ""
            if name not in environ:
                raise ConfigError([f"{path or '$'}: environment variable {name} is not set"])
            return current

        return _VARIABLE.sub(substitute, value)
    if isinstance(value, dict):
        return {k: expand_environment(v, environ, _join(path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_environment(v, environ, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


class _Invalid(ValueError):
    """A value of the right kind of thing but wrong form; its message is shown as is."""


def _strict_converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)

    def structure_str(value: Any, _: type) -> str:
        if not isinstance(value, str):
            raise _Invalid("expected a string")
        return value

    def structure_int(value: Any, _: type) -> int:
        return _parse(int, value, (int, str), "expected an integer")

    def structure_seconds(value: Any, _: type) -> float:
        seconds = _parse(float, value, (int, float, str), "expected a number of seconds")
        if not seconds > 0:
            raise _Invalid("expected a positive number of seconds")
        return seconds

    def structure_number(value: Any, _: type) -> float:
        number = _parse(float, value, (int, float, str), "expected a number")
        if not number >= 0:
            raise _Invalid("expected a number of at least 0")
        return number

    def structure_bool(value: Any, _: type) -> bool:
        # Strings reach here only through ${VAR} expansion; an empty one (unset) is false.
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _BOOLEANS:
            return _BOOLEANS[value.lower()]
        raise _Invalid("expected a boolean")

    def structure_url(value: Any, _: type) -> str:
        if isinstance(value, str):
            parts = urlsplit(value)
            if parts.scheme in ("http", "https") and parts.hostname:
                return value.rstrip("/")
        raise _Invalid("expected a URL")

    def structure_tuple(value: Any, type_: Any) -> tuple[Any, ...]:
        # cattrs would take any iterable, a string included; config lists must be lists.
        if not isinstance(value, list):
            raise _Invalid("expected a list")
        item_type = type_.__args__[0]
        items, errors = [], []
        for index, item in enumerate(value):
            try:
                items.append(converter.structure(item, item_type))
            except Exception as error:
                note = IterableValidationNote(f"@ index {index}", index, item_type)
                error.__notes__ = [*getattr(error, "__notes__", []), note]
                errors.append(error)
        if errors:
            raise IterableValidationError("invalid list items", errors, type_)
        return tuple(items)

    def structure_workers(value: Any, _: type) -> int:
        if value == "auto":
            return os.cpu_count() or 1
        count = _parse(int, value, (int, str), "expected a number of workers or 'auto'")
        if count < 1:
            raise _Invalid("expected at least 1 worker")
        return count

    converter.register_structure_hook(str, structure_str)
    converter.register_structure_hook(Workers, structure_workers)
    converter.register_structure_hook(int, structure_int)
    converter.register_structure_hook(Seconds, structure_seconds)
    converter.register_structure_hook(float, structure_number)
    converter.register_structure_hook(bool, structure_bool)
    converter.register_structure_hook(HttpURL, structure_url)
    converter.register_structure_hook_func(
        lambda t: getattr(t, "__origin__", None) is tuple, structure_tuple
    )

    def structure_choice(value: Any, type_: Any) -> Any:
        if value not in get_args(type_):
            raise _Invalid("expected one of " + ", ".join(map(repr, get_args(type_))))
        return value

    converter.register_structure_hook_func(lambda t: get_origin(t) is Literal, structure_choice)
    return converter


def _parse(kind: type, value: Any, accepted: tuple[type, ...], problem: str) -> Any:
    """``kind(value)`` for a value of an accepted type (booleans never), else `_Invalid`."""
    if isinstance(value, bool) or not isinstance(value, accepted):
        raise _Invalid(problem)
    try:
        return kind(value)
    except ValueError:
        raise _Invalid(problem) from None


_BOOLEANS = {"true": True, "yes": True, "on": True, "1": True,
             "false": False, "no": False, "off": False, "0": False, "": False}

CONVERTER = _strict_converter()


def structure(data: Any, cls: type, path: str) -> Any:
    """Structure ``data`` into ``cls``, turning cattrs' errors into path-named problems."""
    if not isinstance(data, dict) and attrs.has(cls):
        raise ConfigError([f"{path or '$'}: expected a mapping"])
    try:
        return CONVERTER.structure(data, cls)
    except Exception as error:  # cattrs raises ExceptionGroups of what went wrong
        raise ConfigError(list(_problems(error, path))) from None


def _problems(error: BaseException, path: str) -> Any:
    if isinstance(error, ForbiddenExtraKeysError):
        for key in sorted(error.extra_fields):
            yield f"{_join(path, key)}: unknown key"
    elif isinstance(error, ClassValidationError | IterableValidationError):
        located, unlocated = error.group_exceptions()
        for inner, note in located:
            step = getattr(note, "name", None)
            if step is None and isinstance(note.index, str):  # a mapping's key
                step = note.index
            where = _join(path, step) if step is not None else f"{path}[{note.index}]"
            yield from _problems(inner, where)
        for inner in unlocated:
            yield from _problems(inner, path)
    elif isinstance(error, KeyError):
        yield f"{path}: required"
    elif isinstance(error, _Invalid):
        yield f"{path}: {error}"
    elif isinstance(error, ConfigError):
        yield from error.problems
    else:
        yield f"{path}: {error}"


def read_config(
    path: str,
    find_plugins: Callable[[tuple[str, ...]], Mapping[str, Any]],
    environ: Mapping[str, str] = os.environ,
) -> GatewayConfig:
    """Load the config file at ``path``; relative ``plugin_dirs`` are relative to it."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except OSError as error:
        raise ConfigError([f"$: cannot read {path}: {error.strerror}"]) from None
    return load_config(text, find_plugins, environ, os.path.dirname(os.path.abspath(path)))


def load_config(
    text: str,
    find_plugins: Callable[[tuple[str, ...]], Mapping[str, Any]],
    environ: Mapping[str, str] = os.environ,
    base_dir: str = ".",
) -> GatewayConfig:
    """
    Parse a YAML document into a `GatewayConfig`.

    ``find_plugins(plugin_dirs)`` gives the installed provider plugins by name; each has the
    ``settings_type`` its providers' sections are loaded into.
    """
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError([f"$: not valid YAML: {error}"]) from None
    if not isinstance(document, dict):
        raise ConfigError(["$: expected a mapping"])
    document = expand_environment(document, environ)
    raw_providers = document.pop("providers", None)
    if not isinstance(raw_providers, dict) or not raw_providers:
        raise ConfigError(["providers: expected a mapping of at least one provider"])
    document["providers"] = {}
    config = structure(document, GatewayConfig, "")
    plugin_dirs = tuple(os.path.join(base_dir, d) for d in config.plugin_dirs)
    config = attrs.evolve(config, plugin_dirs=plugin_dirs)
    plugins = find_plugins(plugin_dirs)

    def settings_type_for(plugin: str) -> type | None:
        return getattr(plugins.get(plugin), "settings_type", None)

    providers = {}
    problems = []
    for name, raw in raw_providers.items():
        try:
            providers[name] = _provider(name, raw, settings_type_for)
        except ConfigError as error:
            problems.extend(error.problems)
    config = attrs.evolve(config, providers=providers)
    problems.extend(_route_problems(config, known=set(raw_providers)))
    if problems:
        raise ConfigError(problems)
    return _without_disabled(config)


def _provider(
    name: str, raw: Any, settings_type_for: Callable[[str], type | None]
) -> ProviderConfig:
    path = f"providers.{name}"
    if not isinstance(raw, dict):
        raise ConfigError([f"{path}: expected a mapping"])
    raw = dict(raw)
    plugin = raw.pop("plugin", None)
    if not isinstance(plugin, str):
        raise ConfigError([f"{path}.plugin: required, the name of a provider plugin"])
    enabled = structure(raw.pop("enabled", True), bool, f"{path}.enabled")
    settings_type = settings_type_for(plugin)
    if settings_type is None:
        raise ConfigError([f"{path}.plugin: no provider plugin named {plugin!r} is installed"])
    if not enabled:
        return ProviderConfig(plugin=plugin, settings=None, enabled=False)
    return ProviderConfig(plugin=plugin, settings=structure(raw, settings_type, path))


def _route_problems(config: GatewayConfig, known: set[str]) -> list[str]:
    """Routes with no target, or to providers that are not in the config at all."""
    problems = []
    for index, route in enumerate(config.models):
        if (route.provider is None) == (not route.targets):
            problems.append(f"models[{index}]: give either provider or targets")
            continue
        if route.targets:
            problems.extend(
                f"models[{index}].targets[{number}].provider: no provider named "
                f"{target.provider!r}"
                for number, target in enumerate(route.targets) if target.provider not in known)
        elif route.provider not in known:
            problems.append(f"models[{index}].provider: no provider named {route.provider!r}")
    for index, key in enumerate(config.keys):
        if bool(key.key) == bool(key.hash):
            problems.append(f"keys[{index}]: give either key or hash")
    return problems


def _without_disabled(config: GatewayConfig) -> GatewayConfig:
    """Drop disabled providers and the model routes (or route targets) that lead to them."""
    enabled = {name: p for name, p in config.providers.items() if p.enabled}
    routes = []
    for route in config.models:
        targets = tuple(t for t in route.all_targets() if t.provider in enabled)
        if targets:
            routes.append(attrs.evolve(route, targets=targets) if route.targets else route)
    return attrs.evolve(config, providers=enabled, models=tuple(routes))
