"""Prometheus metrics, named after the OpenTelemetry gen-ai conventions where they exist."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

#: Token counts span eight orders of magnitude (the OpenTelemetry gen-ai advice).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
#: LLM calls last from milliseconds (errors) to minutes (long generations).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
#: Realtime sessions last from a refused second to the provider's cap of an hour or so.
SESSION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8, 13, 20, 30, 60)


class GatewayMetrics:
    """
    The gateway's metrics, in a registry of their own (so tests can run several gateways).

    Label children are cached: resolving ``labels(...)`` costs four times an observation.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._tokens = Histogram(
            "txgateway_gen_ai_client_token_usage",
            "Tokens used per call, by operation, provider, requested model and token type.",
            ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
             "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self._requests = Counter(
            "txgateway_requests",
            "Requests answered, by route, model, provider and HTTP status.",
            ["route", "model", "provider", "status"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "txgateway_request_duration_seconds",
            "Time from the request's arrival to its last byte.",
            ["route", "model", "provider"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._ttft = Histogram(
            "txgateway_time_to_first_token_seconds",
            "Time from the request's arrival to the first byte of the upstream's answer body.",
            ["route", "model", "provider"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self._realtime_tokens = Counter(
            "txgateway_realtime_tokens",
            "Realtime model tokens, by model, provider, direction, modality and caching.",
            ["model", "provider", "direction", "modality", "cached"],
            registry=self.registry,
        )
        self._transcription_tokens = Counter(
            "txgateway_realtime_transcription_tokens",
            "Input audio transcription tokens in realtime sessions, by direction.",
            ["model", "provider", "direction"],
            registry=self.registry,
        )
        self._transcription_seconds = Counter(
            "txgateway_realtime_transcription_seconds",
            "Input audio transcribed in realtime sessions, for duration-billed models.",
            ["model", "provider"],
            registry=self.registry,
        )
        self._sessions_active = Gauge(
            "txgateway_realtime_sessions_active",
            "Realtime sessions open now.",
            ["model", "provider"],
            registry=self.registry,
        )
        self._session_duration = Histogram(
            "txgateway_realtime_session_duration_seconds",
            "How long realtime sessions lasted, from the upgrade to the close.",
            ["model", "provider"],
            buckets=SESSION_BUCKETS,
            registry=self.registry,
        )
        self._cost = Counter(
            "txgateway_gen_ai_client_cost_usd",
            "What calls cost, in US dollars at the price table's rates, by route, provider "
            "and model.",
            ["route", "provider", "model"],
            registry=self.registry,
        )
        self._fallbacks = Counter(
            "txgateway_upstream_fallbacks",
            "Attempts given up on a target before any answer, so the call moved on (or "
            "retried), by provider and reason.",
            ["provider", "reason"],
            registry=self.registry,
        )
        self.ledger_pending = Gauge(
            "txgateway_ledger_pending_records",
            "Usage records waiting to be written to the store.",
            registry=self.registry,
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def request(self, route: str, model: str, provider: str, status: str, duration: float,
                ttft: float | None) -> None:
        self._child(self._requests, route, model, provider, status).inc()
        self._child(self._duration, route, model, provider).observe(duration)
        if ttft is not None:
            self._child(self._ttft, route, model, provider).observe(ttft)

    def tokens(self, operation: str, provider: str, model: str, kind: str, count: int) -> None:
        self._child(self._tokens, operation, provider, model, kind).observe(count)

    def realtime_usage(self, model: str, provider: str, usage: Any) -> None:
        """Count a `txgateway.realtime.tally.RealtimeUsage` as it arrives."""
        for direction, modality, cached, count in usage.token_counts():
            self._child(self._realtime_tokens, model, provider, direction, modality,
                        "true" if cached else "false").inc(count)
        for direction, count in (("input", usage.transcription_input_tokens),
                                 ("output", usage.transcription_output_tokens)):
            if count:
                self._child(self._transcription_tokens, model, provider, direction).inc(count)
        if usage.transcription_seconds:
            self._child(self._transcription_seconds, model, provider).inc(
                usage.transcription_seconds)

    def realtime_session(self, model: str, provider: str, change: int) -> None:
        """A session opened (+1) or closed (-1)."""
        self._child(self._sessions_active, model, provider).inc(change)

    def realtime_duration(self, model: str, provider: str, seconds: float) -> None:
        self._child(self._session_duration, model, provider).observe(seconds)

    def cost(self, route: str, provider: str, model: str, usd: float) -> None:
        self._child(self._cost, route, provider, model).inc(usd)

    def fallback(self, provider: str, reason: str) -> None:
        self._child(self._fallbacks, provider, reason).inc()
