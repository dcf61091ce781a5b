"""Prometheus metrics, named after the OpenTelemetry gen-ai conventions where they exist."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

#: Token counts span eight orders of magnitude (the OpenTelemetry gen-ai advice).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304)
#: LLM calls last from milliseconds (errors) to minutes (long generations).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
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
