"""
The multipart endpoints' common call (audio transcriptions and translations, image edits):
the caller's form goes upstream as it arrives (`txgateway.web.upload`), its model field
rewritten in place when the route renames the model, its file parts copied byte for byte;
the answer is relayed as an SSE stream or a whole body.

The call is routed on the form's text fields: the ones before its first file part, which is
where the openai SDK (httpx) writes them, so the upload starts upstream with no more held
than the client's first chunks.  A form whose ``model`` comes after a file is held until the
model has arrived (bounded by ``max_body_bytes``); fields after the first file part go
upstream as they are, the call routed without them.  Only a failure to connect, before the
first body byte went out, falls back to the route's next target: an upload is sent once.
The first-byte timeout counts from the start of the upload.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.web.server import NOT_DONE_YET

from txgateway.accounting import Exchange
from txgateway.dialects.multipart import FormParser, boundary_of
from txgateway.dialects.openai import BadRequest
from txgateway.providers import ApiCall
from txgateway.routing import Target
from txgateway.upstream import UpstreamCall
from txgateway.usage import estimate_tokens
from txgateway.web.proxy import Refusal, is_event_stream
from txgateway.web.relay import start_event_stream
from txgateway.web.rest import RestEndpoint, UsageReader, event_relay
from txgateway.web.upload import Splice, Upload


class FormUpload:
    """
    A multipart form as it arrives (a `txgateway.web.upload.BodyWatcher`): ``head`` fires
    once it can be routed, with the model and the text fields before the first file; or
    fails with a `Refusal` (a malformed form), or why the upload failed.
    """

    def __init__(self, upload: Upload, boundary: bytes | None,
                 required: tuple[str, ...]) -> None:
        self.upload = upload
        self.head: Deferred[None] = Deferred()
        self._required = required
        self._parser = FormParser(boundary or b"")
        if boundary is None:
            self.head.errback(Refusal(
                400, "the content type must be multipart/form-data with a boundary",
                "invalid_content_type"))
        else:
            upload.read_ahead(True)
            upload.watch(self)

    @property
    def fields(self) -> dict[str, str]:
        return self._parser.fields

    @property
    def model(self) -> str:
        return self.fields.get("model", "") if self.head.called else ""

    @property
    def stream(self) -> bool:
        return self.fields.get("stream", "").lower() == "true"

    def splice(self, upstream_model: str) -> Splice | None:
        """The model's value rewritten, when the route renames it."""
        span = self._parser.model_span
        if span is None or upstream_model == self.fields["model"]:
            return None
        return span[0], span[1], upstream_model.encode()

    def received(self, data: bytes) -> None:
        parser = self._parser
        parser.feed(data)
        if not self.head.called and parser.in_file and "model" in parser.fields:
            self._routable()

    def ended(self) -> None:
        self._parser.close()
        for name in self._required:
            if name not in self._parser.names:
                raise BadRequest(f"the multipart field '{name}' is required", name)
        if not self.head.called:
            self._routable()

    def failed(self, error: Exception) -> None:
        if not self.head.called:
            self.head.errback(error)

    def _routable(self) -> None:
        if "model" in self._required and not self.fields.get("model"):
            raise BadRequest("you must provide a model parameter", "model")
        self.upload.read_ahead(False)
        self.head.callback(None)


class FormEndpoint(RestEndpoint):
    """A multipart endpoint: ``required`` fields, and how its answers' usage is read."""

    #: The site streams its bodies (`txgateway.web.upload`).
    streams_upload = True
    required: tuple[str, ...] = ("model", "file")
    read_usage: UsageReader

    def render_POST(self, request: Any) -> Any:
        gateway = self._gateway
        exchange = gateway.accountant.start(self.route)
        request.setHeader(b"x-request-id", exchange.request_id.encode())
        upload = getattr(request, "upload", None) or Upload.whole(request.content.getvalue())
        form = FormUpload(upload, boundary_of(request.getHeader(b"content-type") or b""),
                          self.required)
        call = UpstreamCall(gateway.reactor, gateway.config.upstream)
        request.notifyFinish().addErrback(lambda _: call.abort())
        Deferred.fromCoroutine(self.run(request, exchange, form, 0, call))
        return NOT_DONE_YET

    async def admit(self, request: Any, exchange: Exchange, form: FormUpload,
                    size: int) -> list[Target]:
        """Routed once the form's head has arrived."""
        await form.head
        exchange.model = form.model
        exchange.stream = form.stream
        return await super().admit(request, exchange, form, size)

    def admission_tokens(self, form: FormUpload, size: int) -> int:
        """The text prompt's tokens, estimated: the file's bytes are no tokens."""
        return estimate_tokens(len(form.fields.get("prompt", "")))

    async def proxy(self, request: Any, exchange: Exchange, form: FormUpload, target: Target,
                    call: UpstreamCall) -> None:
        self.served(exchange.model, target)
        provider = target.provider
        built = provider.build_request(ApiCall(
            api=self.api, body=b"", parsed=form.fields, model=target.model,
            stream=form.stream))
        headers = built.headers.copy()
        headers.setRawHeaders(b"content-type", [request.getHeader(b"content-type")])

        def sending() -> None:
            call.may_fall_back = False  # the upload cannot be replayed elsewhere now

        body = form.upload.producer(form.splice(target.model), sending)
        response = await call.send(provider.agent,
                                   attrs.evolve(built, headers=headers, body=body))
        if form.stream and response.code == 200 and is_event_stream(response):
            start_event_stream(request)
            exchange.status = 200
            relay = event_relay(self._gateway, request, exchange, call, self.read_usage,
                                len(form.fields.get("prompt", "")))
            call.deliver(response, relay)
            await relay.done
            return
        exchange.first_byte = self._gateway.reactor.seconds()
        body_bytes = await call.read(response)
        self.answer(request, exchange, response, call, body_bytes, self.read_usage)
