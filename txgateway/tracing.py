"""
OpenTelemetry traces after the gen_ai semantic conventions, exported over OTLP/HTTP.

Off unless ``tracing.otlp_endpoint`` is set, and then nothing of it is on the hot path: the
tree's root, the upstream agent and the accountant are the plain ones.  On, three pieces work
together through one context variable, which Twisted copies into every coroutine a request
starts:

- `TracedRoot` sets the variable to a `RequestTrace` while the endpoint renders (the caller's
  ``traceparent`` and the arrival time; no span yet, so admin and health calls cost none);
- `TracingAgent` opens the request's server span on its first upstream call, and a client
  span per call under it, whose ``traceparent`` it sends upstream;
- `Tracing.exchange_finished` (the accountant's end of a call) writes the gen_ai attributes
  and ends the spans.  A realtime session's span is written whole at its end.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent
from twisted.web.resource import Resource, getChildForRequest
from zope.interface import implementer

from txgateway import semconv
from txgateway.config import TracingSettings
from txgateway.web.resource import Root

if TYPE_CHECKING:
    from txgateway.accounting import Outcome

_PROPAGATOR = TraceContextTextMapPropagator()
_current: ContextVar[RequestTrace | None] = ContextVar("txgateway_trace", default=None)


class Tracing:
    """The tracer provider and its exporter, and the spans of calls and sessions."""

    def __init__(self, settings: TracingSettings) -> None:
        # Imported here: the SDK and the OTLP exporter (protobuf) weigh ~6 MiB in every
        # process, and most configs trace nothing.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource as OTelResource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        # The provider flushes what it buffered when the process exits.
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            resource=OTelResource.create({"service.name": settings.service_name}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
            endpoint=settings.otlp_endpoint, headers=dict(settings.headers))))
        self.tracer = self.provider.get_tracer("txgateway")

    def exchange_finished(self, exchange: Any, outcome: Outcome) -> None:
        """A REST call's end: its server span (opened now if no upstream call did) ends."""
        trace = _current.get()
        if trace is None or trace.ended:
            return
        trace.ended = True
        span = trace.server_span()
        operation = semconv.operation(exchange.route)
        span.update_name(f"{operation} {exchange.model}" if exchange.model else operation)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.request.model": exchange.model,
            "http.response.status_code": outcome.status,
            "txgateway.route": exchange.route,
            "txgateway.request_id": exchange.request_id,
            "txgateway.stream": exchange.stream,
            "txgateway.attempts": outcome.attempts + 1,
        }
        if exchange.key_id:
            attributes["txgateway.key_id"] = exchange.key_id
        if outcome.provider:
            attributes["gen_ai.provider.name"] = semconv.provider(outcome.provider_kind)
            attributes["txgateway.provider"] = outcome.provider
        if outcome.usage is not None:
            attributes.update(_usage_attributes(outcome.usage))
        span.set_attributes(attributes)
        if outcome.first_byte is not None:
            span.add_event("gen_ai.first_byte", timestamp=_ns(outcome.first_byte))
        if outcome.status >= 400:
            span.set_attribute("error.type", str(outcome.status))
            span.set_status(Status(StatusCode.ERROR, outcome.error))
        for client in trace.clients:
            if client.is_recording() and client.end_time is None:
                client.update_name(f"{operation} {outcome.upstream_model}")
                client.set_attributes({
                    "gen_ai.operation.name": operation,
                    "gen_ai.request.model": outcome.upstream_model,
                    "gen_ai.provider.name": semconv.provider(outcome.provider_kind)})
            if client.end_time is None:
                client.end()
        span.end()

    def session_ended(self, session: Any) -> None:
        """A realtime session, written as one span from its upgrade to its close."""
        info, tally = session.info, session.tally
        usage = tally.usage
        span = self.tracer.start_span(
            f"realtime {info.model}", kind=SpanKind.SERVER, start_time=_ns(tally.started),
            attributes={
                "gen_ai.operation.name": "realtime",
                "gen_ai.request.model": info.model,
                "gen_ai.provider.name": semconv.provider(info.provider_kind),
                "gen_ai.conversation.id": info.id,
                "gen_ai.usage.input_tokens": usage.input_tokens,
                "gen_ai.usage.output_tokens": usage.output_tokens,
                "gen_ai.usage.cache_read.input_tokens": usage.input_cached_tokens,
                "txgateway.realtime.input_audio_tokens": usage.input_audio_tokens,
                "txgateway.realtime.output_audio_tokens": usage.output_audio_tokens,
                "txgateway.realtime.transcription_input_tokens":
                    usage.transcription_input_tokens,
                "txgateway.provider": info.provider,
            })
        for name, value in (("txgateway.key_id", info.key_id),
                            ("txgateway.realtime.ended_by", session.ended_by),
                            ("txgateway.realtime.client_close_code",
                             session.client_close and session.client_close[0])):
            if value:
                span.set_attribute(name, value)
        span.end(end_time=_ns(tally.ended or tally.started))


def open_tracing(settings: TracingSettings) -> Tracing | None:
    """The tracing a config asks for, or None (nothing traced, nothing paid)."""
    return Tracing(settings) if settings.otlp_endpoint else None


def _usage_attributes(usage: Any) -> dict[str, int]:
    attributes = {"gen_ai.usage.input_tokens": usage.input_tokens,
                  "gen_ai.usage.output_tokens": usage.output_tokens}
    if usage.cached_input_tokens:
        attributes["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input_tokens
    if usage.cache_creation_tokens:
        attributes["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_creation_tokens
    if usage.reasoning_tokens:
        attributes["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    return attributes


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


class RequestTrace:
    """One request's trace: where it came from, and its spans once a call opens them."""

    def __init__(self, tracing: Tracing, traceparent: bytes | None,
                 tracestate: bytes | None) -> None:
        self._tracing = tracing
        self._carrier = {name: value.decode("latin-1") for name, value in
                         (("traceparent", traceparent), ("tracestate", tracestate)) if value}
        self._arrived = time.time_ns()
        self._span: Any = None
        self.clients: list[Any] = []
        self.ended = False

    def server_span(self) -> Any:
        if self._span is None:
            parent = _PROPAGATOR.extract(self._carrier) if self._carrier else None
            self._span = self._tracing.tracer.start_span(
                "gateway", context=parent, kind=SpanKind.SERVER, start_time=self._arrived)
        return self._span

    def client_span(self, method: bytes, uri: bytes) -> Any:
        """A span for one upstream call, child of the server span."""
        scheme, _, rest = uri.partition(b"://")
        authority = rest.partition(b"/")[0].decode("latin-1")
        host, _, port = authority.rpartition(":") if ":" in authority else (authority, "", "")
        span = self._tracing.tracer.start_span(
            method.decode("ascii"), context=set_span_in_context(self.server_span()),
            kind=SpanKind.CLIENT, attributes={
                "http.request.method": method.decode("ascii"),
                "server.address": host,
                "server.port": int(port) if port.isdigit() else
                (443 if scheme == b"https" else 80),
                # The path only: some providers put credentials in the query.
                "url.path": "/" + rest.partition(b"/")[2].partition(b"?")[0].decode("latin-1"),
            })
        self.clients.append(span)
        return span


@implementer(IAgent)
class TracingAgent:
    """An ``IAgent`` wrapper: every upstream call of a traced request gets a client span."""

    def __init__(self, agent: Any) -> None:
        self._agent = agent

    def request(self, method: bytes, uri: bytes, headers: Any = None,
                bodyProducer: Any = None) -> Any:  # noqa: N803 (IAgent's name)
        trace = _current.get()
        if trace is None or trace.ended:
            return self._agent.request(method, uri, headers, bodyProducer)
        span = trace.client_span(method, uri)
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, set_span_in_context(span))
        # The provider's headers may be shared between calls: each call gets its own.
        headers = headers.copy() if headers is not None else Headers()
        for name, value in carrier.items():
            headers.setRawHeaders(name.encode(), [value.encode()])
        answered = self._agent.request(method, uri, headers, bodyProducer)

        def seen(result: Any) -> Any:
            code = getattr(result, "code", None)
            if code is not None:
                span.set_attribute("http.response.status_code", code)
                if code >= 400:
                    span.set_attribute("error.type", str(code))
                    span.set_status(Status(StatusCode.ERROR))
            else:  # a Failure: the call never got an answer
                span.set_attribute("error.type", type(result.value).__name__)
                span.set_status(Status(StatusCode.ERROR, str(result.value)))
                span.end()
            return result

        return answered.addBoth(seen)


class TracedRoot(Root):
    """
    The tree's root while tracing: it walks the path to its endpoint itself and hands back
    that endpoint wrapped, so the request's `RequestTrace` is current while it renders.
    """

    def __init__(self, accountant: Any, tracing: Tracing, max_in_flight: int = 0) -> None:
        super().__init__(accountant, max_in_flight)
        self._tracing = tracing

    def getChildWithDefault(self, path: bytes, request: Any) -> Resource:
        endpoint = getChildForRequest(super().getChildWithDefault(path, request), request)
        return _Traced(endpoint, self._tracing)


class _Traced(Resource):
    isLeaf = True

    def __init__(self, endpoint: Resource, tracing: Tracing) -> None:
        super().__init__()
        self._endpoint = endpoint
        self._tracing = tracing

    def render(self, request: Any) -> Any:
        trace = RequestTrace(self._tracing, request.getHeader(b"traceparent"),
                             request.getHeader(b"tracestate"))
        token = _current.set(trace)
        try:
            return self._endpoint.render(request)
        finally:
            _current.reset(token)
