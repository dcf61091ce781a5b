"""
The multipart endpoints' common call (audio transcriptions and translations, image edits):
the caller's form goes upstream as it came, its model field rewritten in place when the route
renames the model, its file parts streamed from the received body a slice at a time (never
re-encoded nor copied whole); the answer is relayed as an SSE stream or a whole body.

The site holds a request body in memory (bounded by ``max_body_bytes``) before the endpoint
sees it: the upload to the upstream starts once the caller's upload is complete.
"""

from __future__ import annotations

from typing import Any

import attrs

from txgateway.accounting import Exchange
from txgateway.dialects.multipart import FormRequest, SegmentsProducer, boundary_of, parse_form
from txgateway.dialects.openai import error_body
from txgateway.providers import ApiCall
from txgateway.routing import Target
from txgateway.upstream import UpstreamCall
from txgateway.usage import estimate_tokens
from txgateway.web.proxy import finish, is_event_stream
from txgateway.web.relay import start_event_stream
from txgateway.web.rest import EventRelay, RestEndpoint, UsageReader


class FormEndpoint(RestEndpoint):
    """A multipart endpoint: ``required`` fields, and how its answers' usage is read."""

    required: tuple[str, ...] = ("model", "file")
    read_usage: UsageReader

    def parse(self, raw: bytes) -> FormRequest:
        return parse_form(raw, self.required)

    def admission_tokens(self, parsed: FormRequest, size: int) -> int:
        """The text prompt's tokens, estimated: the file's bytes are no tokens."""
        return estimate_tokens(len(parsed.fields.get("prompt", "")))

    async def proxy(self, request: Any, exchange: Exchange, form: FormRequest, target: Target,
                    call: UpstreamCall) -> None:
        content_type = request.getHeader(b"content-type") or b""
        if boundary_of(content_type) != form.boundary:
            message = "the content type must be multipart/form-data with the body's boundary"
            exchange.status = 400
            exchange.error = message
            finish(request, call, 400, error_body(400, message, "invalid_content_type"))
            return
        if self.refused_api(request, exchange, call, target):
            return
        provider = target.provider
        built = provider.build_request(ApiCall(
            api=self.api, body=b"", parsed=form.fields, model=target.model,
            stream=form.stream))
        headers = built.headers.copy()
        headers.setRawHeaders(b"content-type", [content_type])
        upstream_request = attrs.evolve(
            built, headers=headers, body=SegmentsProducer(form.upstream_segments(target.model)))
        response = await call.send(provider.agent, upstream_request)
        if form.stream and response.code == 200 and is_event_stream(response):
            start_event_stream(request)
            exchange.status = 200
            relay = EventRelay(self._gateway.reactor, self._gateway.config.upstream, request,
                               exchange, call, self.read_usage,
                               len(form.fields.get("prompt", "")))
            call.deliver(response, relay)
            await relay.done
            return
        exchange.first_byte = self._gateway.reactor.seconds()
        body = await call.read(response)
        self.answer(request, exchange, response, call, body, self.read_usage)
