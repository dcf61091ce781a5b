"""
Prometheus metrics, named after the OpenTelemetry gen-ai conventions where they exist.

The series are plain numbers in dicts, turned into Prometheus families only when scraped.
prometheus_client's own metric objects take a lock per increment and walk the buckets per
observation, which cost a request about as much as writing its access-log line; the reactor
is one thread, so the gateway needs neither.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from txgateway import semconv

#: Token counts span eight orders of magnitude (the OpenTelemetry gen-ai advice).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
#: LLM calls last from milliseconds (errors) to minutes (long generations).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
#: Realtime sessions last from a refused second to the provider's cap of an hour or so.
SESSION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60)


class _Series:
    """One metric's values by label values; a counter's or gauge's value is a float."""

    family: type[CounterMetricFamily | GaugeMetricFamily] = CounterMetricFamily

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.values: dict[tuple[str, ...], Any] = {}

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        self.values[labels] = self.values.get(labels, 0) + amount

    def set(self, labels: tuple[str, ...], value: float) -> None:
        self.values[labels] = value

    def collect(self) -> Metric:
        family = self.family(self.name, self.documentation, labels=self.labels)
        for labels, value in self.values.items():
            family.add_metric(labels, value)
        return family


class _Gauge(_Series):
    family = GaugeMetricFamily


class _Histogram(_Series):
    """Values are ``[count per bucket (the last is +Inf), sum]``, cumulated when scraped."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 buckets: Sequence[float]) -> None:
        super().__init__(name, documentation, labels)
        self.bounds = tuple(float(bound) for bound in buckets)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        series = self.values.get(labels)
        if series is None:
            series = self.values[labels] = [[0] * (len(self.bounds) + 1), 0.0]
        series[0][bisect_left(self.bounds, value)] += 1  # the first bound >= value: le
        series[1] += value

    def collect(self) -> Metric:
        return _histogram_family(self.name, self.documentation, self.labels, self.bounds,
                                 self.values)


def _histogram_family(name: str, documentation: str, labels: Sequence[str],
                      bounds: Sequence[float], values: dict[tuple[str, ...], Any]) -> Metric:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    edges = [*(repr(bound) for bound in bounds), "+Inf"]
    for label_values, (counts, total) in values.items():
        cumulative, buckets = 0, []
        for edge, count in zip(edges, counts, strict=True):
            cumulative += count
            buckets.append((edge, cumulative))
        family.add_metric(label_values, buckets, total)
    return family


class _Regrouped:
    """
    A histogram family made at scrape time from another histogram's series, relabelled by
    ``relabel`` (series that land on the same labels are summed): a second view of the same
    observations, which costs the request nothing.
    """

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 source: _Histogram, relabel: Callable[[tuple[str, ...]], tuple[str, ...]]
                 ) -> None:
        self.name, self.documentation, self.labels = name, documentation, list(labels)
        self._source, self._relabel = source, relabel

    def collect(self) -> Metric:
        merged: dict[tuple[str, ...], Any] = {}
        for labels, (counts, total) in self._source.values.items():
            key = self._relabel(labels)
            into = merged.get(key)
            if into is None:
                merged[key] = [list(counts), total]
            else:
                into[0] = [mine + theirs for mine, theirs in zip(into[0], counts, strict=True)]
                into[1] += total
        return _histogram_family(self.name, self.documentation, self.labels,
                                 self._source.bounds, merged)


class GatewayMetrics:
    """The gateway's metrics, in a registry of their own (so tests can run several gateways)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._tokens = _Histogram(
            "txgateway_gen_ai_client_token_usage",
            "Tokens used per call, by operation, provider, requested model and token type.",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
             "gen_ai_token_type"],
            TOKEN_BUCKETS,
        )
        self._requests = _Series(
            "txgateway_requests",
            "Requests answered, by route, model, provider and HTTP status.",
            ["route", "model", "provider", "status"],
        )
        #: Durations by route, model, provider and status; scraped as the two views below.
        self._duration = _Histogram(
            "txgateway_request_duration_seconds", "", ["route", "model", "provider", "status"],
            DURATION_BUCKETS,
        )
        self._ttft = _Histogram(
            "txgateway_time_to_first_token_seconds",
            "Time from the request's arrival to the first byte of the upstream's answer body.",
            ["route", "model", "provider"],
            TTFT_BUCKETS,
        )
        self._realtime_tokens = _Series(
            "txgateway_realtime_tokens",
            "Realtime model tokens, by model, provider, direction, modality and caching.",
            ["model", "provider", "direction", "modality", "cached"],
        )
        self._transcription_tokens = _Series(
            "txgateway_realtime_transcription_tokens",
            "Input audio transcription tokens in realtime sessions, by direction.",
            ["model", "provider", "direction"],
        )
        self._transcription_seconds = _Series(
            "txgateway_realtime_transcription_seconds",
            "Input audio transcribed in realtime sessions, for duration-billed models.",
            ["model", "provider"],
        )
        self._live_seconds = _Series(
            "txgateway_realtime_live_seconds",
            "Billed seconds of Live sessions as their provider reports them, active or paused.",
            ["model", "provider", "state"],
        )
        self._sessions_active = _Gauge(
            "txgateway_realtime_sessions_active",
            "Realtime sessions open now.",
            ["model", "provider"],
        )
        self._session_duration = _Histogram(
            "txgateway_realtime_session_duration_seconds",
            "How long realtime sessions lasted, from the upgrade to the close.",
            ["model", "provider"],
            SESSION_BUCKETS,
        )
        self._cost = _Series(
            "txgateway_gen_ai_client_cost_usd",
            "What calls cost, in US dollars at the price table's rates, by route, provider "
            "and model.",
            ["route", "provider", "model"],
        )
        self._fallbacks = _Series(
            "txgateway_upstream_fallbacks",
            "Attempts given up on a target before any answer, so the call moved on (or "
            "retried), by provider and reason.",
            ["provider", "reason"],
        )
        self._ledger_pending = _Gauge(
            "txgateway_ledger_pending_records",
            "Usage records waiting to be written to the store.",
        )
        #: Provider kind by provider name, for the gen_ai views (the gateway keeps it current).
        self.provider_kinds: dict[str, str] = {}
        self._all = [value for value in vars(self).values()
                     if isinstance(value, _Series) and value is not self._duration]
        self._views = self._semconv_views()
        self.registry.register(self)

    def _semconv_views(self) -> list[_Regrouped]:
        """
        Today's request duration without its status, and the OpenTelemetry gen_ai metrics
        under their own names, with the conventions' attribute names as labels.
        """
        gen_ai = ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model"]

        def by_call(route: str, model: str, provider: str) -> tuple[str, ...]:
            kind = self.provider_kinds.get(provider, provider)
            return semconv.operation(route), semconv.provider(kind), model

        def failed(status: str) -> str:
            return status if status.isdigit() and int(status) >= 400 else ""

        return [
            _Regrouped("txgateway_request_duration_seconds",
                       "Time from the request's arrival to its last byte.",
                       ["route", "model", "provider"], self._duration,
                       lambda labels: labels[:3]),
            _Regrouped("gen_ai_client_token_usage",
                       "Tokens used per call (gen_ai.client.token.usage), by token type.",
                       [*gen_ai, "gen_ai_token_type"], self._tokens,
                       lambda labels: (semconv.operation(labels[0]), semconv.provider(labels[1]),
                                       *labels[2:])),
            _Regrouped("gen_ai_client_operation_duration_seconds",
                       "Time from a call's arrival to its last byte "
                       "(gen_ai.client.operation.duration); error_type set when it failed.",
                       [*gen_ai, "error_type"], self._duration,
                       lambda labels: (*by_call(*labels[:3]), failed(labels[3]))),
            _Regrouped("gen_ai_server_time_to_first_token_seconds",
                       "Time from a call's arrival to the first byte of the upstream's answer "
                       "(gen_ai.server.time_to_first_token).",
                       gen_ai, self._ttft, lambda labels: by_call(*labels)),
        ]

    def collect(self) -> Iterator[Metric]:
        """The registry's collector interface: every series, as of now."""
        for series in self._all:
            yield series.collect()
        for view in self._views:
            yield view.collect()

    def request(self, route: str, model: str, provider: str, status: str, duration: float,
                ttft: float | None) -> None:
        labels = (route, model, provider, status)
        self._requests.inc(labels)
        self._duration.observe(labels, duration)
        if ttft is not None:
            self._ttft.observe(labels[:3], ttft)

    def tokens(self, operation: str, provider: str, model: str, kind: str, count: int) -> None:
        self._tokens.observe((operation, provider, model, kind), count)

    def realtime_usage(self, model: str, provider: str, usage: Any) -> None:
        """Count a `txgateway.realtime.tally.RealtimeUsage` as it arrives."""
        for direction, modality, cached, count in usage.token_counts():
            self._realtime_tokens.inc(
                (model, provider, direction, modality, "true" if cached else "false"), count)
        for direction, count in (("input", usage.transcription_input_tokens),
                                 ("output", usage.transcription_output_tokens)):
            if count:
                self._transcription_tokens.inc((model, provider, direction), count)
        if usage.transcription_seconds:
            self._transcription_seconds.inc((model, provider), usage.transcription_seconds)
        if usage.live_seconds:
            paused = usage.live_paused_seconds
            self._live_seconds.inc((model, provider, "active"),
                                   max(usage.live_seconds - paused, 0.0))
            if paused:
                self._live_seconds.inc((model, provider, "paused"), paused)

    def realtime_session(self, model: str, provider: str, change: int) -> None:
        """A session opened (+1) or closed (-1)."""
        self._sessions_active.inc((model, provider), change)

    def realtime_duration(self, model: str, provider: str, seconds: float) -> None:
        self._session_duration.observe((model, provider), seconds)

    def cost(self, route: str, provider: str, model: str, usd: float) -> None:
        self._cost.inc((route, provider, model), usd)

    def fallback(self, provider: str, reason: str) -> None:
        self._fallbacks.inc((provider, reason))

    def ledger_pending(self, records: int) -> None:
        self._ledger_pending.set((), records)
