"""An OTLP/HTTP traces receiver on loopback that decodes the protobuf, for the tracing tests."""

from __future__ import annotations

import gzip
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site


class OTLPReceiver(Resource):
    """Keeps every span received, as ``(resource attributes, span)`` pairs."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.paths: list[bytes] = []

    def render_POST(self, request: Any) -> bytes:
        self.paths.append(request.path)
        body = request.content.read()
        if request.getHeader(b"content-encoding") == b"gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend((resource, span) for span in scope_spans.spans)
        request.setHeader(b"content-type", b"application/x-protobuf")
        request.setHeader(b"connection", b"close")  # nothing left open when a test ends
        return ExportTraceServiceResponse().SerializeToString()


def attributes(pairs: Any) -> dict[str, Any]:
    """OTLP ``KeyValue``s as a dict of plain values."""
    values = {}
    for pair in pairs:
        kind = pair.value.WhichOneof("value")
        values[pair.key] = getattr(pair.value, kind) if kind else None
    return values


def start_receiver() -> tuple[OTLPReceiver, Any]:
    receiver = OTLPReceiver()
    return receiver, reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")
