"""
The multipart endpoints' common call (audio transcriptions and translations, image edits):
the caller's form goes upstream as it arrives (`txgateway.web.upload`), its model field
rewritten in place when the route renames the model, its file parts copied byte for byte;
the call runs on the pipeline (`txgateway.web.runner`): a stream asked for is relayed as SSE,
a JSON answer given whole, any other (a transcript as text) as the upstream writes it.

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
from txgateway.admission import Refusal
from txgateway.dialects.multipart import FormParser, boundary_of
from txgateway.dialects.openai import BadRequest
from txgateway.providers import ApiCall, UpstreamRequest
from txgateway.routing import Target
from txgateway.upstream import UpstreamCall
from txgateway.web.rest import PassingRest
from txgateway.web.runner import CallEndpoint, asked, run
from txgateway.web.upload import Splice, Upload, UploadProducer


class FormUpload:
    """
    A multipart form as it arrives (a `txgateway.web.upload.BodyWatcher`): ``head`` fires
    once it can be routed, with the model and the text fields before the first file; or
    fails with a `Refusal` (a malformed form), or why the upload failed.  It is sent once,
    on ``call``: once its first bytes went out, the call may not fall back.
    """

    def __init__(self, upload: Upload, content_type: bytes, required: tuple[str, ...],
                 call: UpstreamCall) -> None:
        self.upload = upload
        self.content_type = content_type
        self.head: Deferred[None] = Deferred()
        self._call = call
        boundary = boundary_of(content_type)
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

    def body(self, upstream_model: str) -> UploadProducer:
        """The upload as the body of a call to ``upstream_model``."""
        return self.upload.producer(self._splice(upstream_model), self._sending)

    def _splice(self, upstream_model: str) -> Splice | None:
        """The model's value rewritten, when the route renames it."""
        span = self._parser.model_span
        if span is None or upstream_model == self.fields["model"]:
            return None
        return span[0], span[1], upstream_model.encode()

    def _sending(self) -> None:
        self._call.may_fall_back = False  # the upload cannot be replayed elsewhere now

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


class FormEndpoint(CallEndpoint):
    """
    A multipart endpoint: its ``required`` fields, and the `FormCodec` of its API (`codec`,
    as `txgateway.web.rest.served_by` gives it).
    """

    #: The site streams its bodies (`txgateway.web.upload`).
    streams_upload = True
    required: tuple[str, ...] = ("model", "file")

    def render_POST(self, request: Any) -> Any:
        gateway = self._gateway
        exchange = gateway.accountant.start(self.route)
        request.setHeader(b"x-request-id", exchange.request_id.encode())
        upload = getattr(request, "upload", None) or Upload.whole(request.content.getvalue())
        call = UpstreamCall(gateway.reactor, gateway.config.upstream)
        form = FormUpload(upload, request.getHeader(b"content-type") or b"", self.required,
                          call)
        request.notifyFinish().addErrback(lambda _: call.abort())
        Deferred.fromCoroutine(run(self, request, exchange, form, 0, call))
        return NOT_DONE_YET

    async def admit(self, request: Any, exchange: Exchange, form: FormUpload,
                    size: int) -> list[Target]:
        """Routed once the form's head has arrived."""
        await form.head
        asked(exchange, form)
        return await super().admit(request, exchange, form, size)

    def prompt_size(self, form: FormUpload, size: int) -> int:
        """The text prompt's: the file's bytes are no tokens."""
        return len(form.fields.get("prompt", ""))


class FormCodec(PassingRest):
    """
    The identity codec of a multipart form: the upload goes upstream as it arrives, under the
    caller's content type (its boundary); answers as `PassingRest`'s.
    """

    def request(self, form: FormUpload, target: Target) -> UpstreamRequest:
        built = target.provider.build_request(ApiCall(
            api=self.api, body=b"", parsed=form.fields, model=target.model,
            stream=form.stream))
        headers = built.headers.copy()
        headers.setRawHeaders(b"content-type", [form.content_type])
        return attrs.evolve(built, headers=headers, body=form.body(target.model))
