"""
``/v1/files``: OpenAI's Files API on the providers' own (native) files APIs.

The gateway hosts no file: an upload goes to a provider that serves files and the gateway
records which one, for the caller's key.  Which provider: for ``purpose=batch``, the one
every line's model routes to (`txgateway.web.batch_lines.BatchInput`, aliases rewritten to
upstream models on the way); for other purposes, ``?provider=``, or the only provider that
serves files.  Retrieve and delete are forwarded to that provider; the content is relayed as
it arrives (a batch's output file has its usage entered into the ledger on the way, once);
the list is the caller's records.

The upload is read as an incremental consumer (`FileForm.feed`, `FileForm.finish`), fed from the
received body a slice at a time; the form goes upstream as the caller wrote it, the batch
file's content rewritten line by line.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet.defer import Deferred

from txgateway.dialects.form_stream import FormReader, PartHead
from txgateway.dialects.multipart import SegmentsProducer, boundary_of
from txgateway.gateway import Gateway
from txgateway.web.batch_lines import BATCH_USAGE, FILE, BatchInput, BatchOutput, enter_usage
from txgateway.web.native_objects import NativeCall, argument, listed, run
from txgateway.web.proxy import Refusal
from txgateway.web.resource import JSONResource, NotFound

#: How much of the received body the upload reads at a time.
SLICE = 64 * 1024
#: Text fields (purpose, expires_after[...]) longer than this are refused.
FIELD_LIMIT = 4096


class FileForm:
    """
    An upload form as it arrives (`feed` pieces of the body, then `finish`): its text fields,
    its one file part (which must come after ``purpose``), and ``segments``, the form to send
    upstream: the caller's parts with a batch file's lines rewritten.
    """

    def __init__(self, boundary: bytes, batch_input: Any) -> None:
        self._reader = FormReader(boundary, self)
        self._boundary = boundary
        self._batch_input = batch_input
        self.fields: dict[str, str] = {}
        self.segments: list[bytes] = []
        self.lines: BatchInput | None = None
        self.filename: str | None = None
        self._part: PartHead | None = None
        self._text = b""

    def feed(self, chunk: bytes) -> None:
        self._reader.feed(chunk)

    def finish(self) -> None:
        self._reader.finish()
        if "purpose" not in self.fields:
            raise Refusal(400, "the multipart field 'purpose' is required", None, "purpose")
        if self.filename is None:
            raise Refusal(400, "the multipart field 'file' is required", None, "file")
        self.segments.append(b"\r\n--" + self._boundary + b"--\r\n")

    def started(self, head: PartHead) -> None:
        opening = b"--" if not self.segments else b"\r\n--"
        self.segments.append(opening + self._boundary + b"\r\n" + head.raw + b"\r\n\r\n")
        self._part, self._text = head, b""
        if head.filename is None:
            return
        if head.name != "file" or self.filename is not None:
            raise Refusal(400, f"unexpected file part '{head.name}': send one, named 'file'",
                          None, head.name)
        purpose = self.fields.get("purpose")
        if purpose is None:
            raise Refusal(400, "the multipart field 'purpose' must come before 'file'", None,
                          "purpose")
        self.filename = head.filename
        if purpose == "batch":
            self.lines = self._batch_input()

    def data(self, chunk: bytes) -> None:
        assert self._part is not None
        if self._part.filename is None:
            self._text += chunk
            if len(self._text) > FIELD_LIMIT:
                raise Refusal(400, f"the multipart field '{self._part.name}' is too long",
                              None, self._part.name)
            self.segments.append(chunk)
        elif self.lines is not None:
            self.segments.append(self.lines.feed(chunk))
        else:
            self.segments.append(chunk)

    def ended(self) -> None:
        assert self._part is not None
        if self._part.filename is None:
            self.fields.setdefault(self._part.name, self._text.decode("utf-8", "replace"))
        elif self.lines is not None:
            self.segments.append(self.lines.finish())
        self._part = None


class Files(JSONResource):
    """``/v1/files``: upload (POST) and the caller's files (GET); ids below."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__()
        self._gateway = gateway

    def getChild(self, path: bytes, request: Any) -> Any:
        return StoredFile(self._gateway, path.decode("utf-8", "replace"))

    def render_GET(self, request: Any) -> Any:
        purpose = argument(request, b"purpose")
        return run(self._gateway, request, "files", lambda call: listed(
            call, FILE, "file", 10_000, 10_000,
            lambda held: purpose is None or held["file"].get("purpose") == purpose))

    def render_POST(self, request: Any) -> Any:
        return run(self._gateway, request, "files", _upload)


async def _upload(call: NativeCall) -> None:
    gateway, request = call.gateway, call.request
    content_type = request.getHeader(b"content-type") or b""
    boundary = boundary_of(content_type)
    if boundary is None:
        raise Refusal(400, "the content type must be multipart/form-data with a boundary",
                      "invalid_content_type")
    named = argument(request, b"provider")
    pinned = None
    if named is not None:
        pinned = gateway.providers.get(named)
        if pinned is None or "files" not in pinned.apis:
            raise Refusal(400, f"no configured provider `{named}` serves files",
                          "unknown_provider", "provider")
    upload = FileForm(boundary, lambda: BatchInput(gateway.router.plan, call.principal, pinned))
    body = memoryview(request.content.getvalue())
    for offset in range(0, len(body), SLICE):
        upload.feed(bytes(body[offset:offset + SLICE]))
    upload.finish()
    provider = upload.lines.provider if upload.lines is not None else pinned
    if provider is None:
        serving = [one for one in gateway.providers.values() if "files" in one.apis]
        if len(serving) != 1:
            names = ", ".join(sorted(one.name for one in serving)) or "none"
            raise Refusal(400, "name the provider to hold the file with ?provider= (those "
                          f"serving files: {names})", "provider_required", "provider")
        provider = serving[0]
    call.exchange.provider, call.exchange.provider_kind = provider.name, provider.kind
    response = await call.send(provider, "files", b"POST", body=SegmentsProducer(
        [memoryview(segment) for segment in upload.segments if segment]),
        content_type=content_type)
    status, answer = await call.answer_of(response)
    if status == 200:
        made = orjson.loads(answer)
        held: dict[str, Any] = {"owner": call.owner, "provider": provider.name,
                                "provider_kind": provider.kind, "file": made}
        if upload.lines is not None:
            held["aliases"] = upload.lines.aliases
            held["upstream_models"] = upload.lines.upstream_models
        await gateway.store.put_object(FILE, made["id"], call.owner, held,
                                       made.get("created_at") or gateway.reactor.seconds())
    await call.answer(status, answer)


class StoredFile(JSONResource):
    """``/v1/files/{id}`` (GET, DELETE) and ``/v1/files/{id}/content`` (GET)."""

    isLeaf = True

    def __init__(self, gateway: Gateway, file_id: str) -> None:
        super().__init__()
        self._gateway = gateway
        self._id = file_id

    def render_GET(self, request: Any) -> Any:
        if request.postpath in ([], [b""]):
            return run(self._gateway, request, "files", self._retrieve)
        if request.postpath == [b"content"]:
            return run(self._gateway, request, "files", self._content)
        return NotFound().render(request)

    def render_DELETE(self, request: Any) -> Any:
        if request.postpath not in ([], [b""]):
            return NotFound().render(request)
        return run(self._gateway, request, "files", self._delete)

    async def _retrieve(self, call: NativeCall) -> None:
        held = await call.owned(FILE, self._id, "File")
        response = await call.send(call.provider(held), "files", b"GET", "/" + self._id)
        status, body = await call.answer_of(response)
        if status == 200:
            held["file"] = orjson.loads(body)
            await call.gateway.store.put_object(FILE, self._id, call.owner, held,
                                                held["file"].get("created_at") or 0)
        await call.answer(status, body)

    async def _delete(self, call: NativeCall) -> None:
        held = await call.owned(FILE, self._id, "File")
        response = await call.send(call.provider(held), "files", b"DELETE", "/" + self._id)
        status, body = await call.answer_of(response)
        if status in (200, 404):  # gone upstream either way: forget it
            await call.gateway.store.delete_object(FILE, self._id)
        await call.answer(status, body)

    async def _content(self, call: NativeCall) -> None:
        held = await call.owned(FILE, self._id, "File")
        response = await call.send(call.provider(held), "files", b"GET",
                                   f"/{self._id}/content")
        await relay_content(call, response, held.get("batch"))


async def relay_content(call: NativeCall, response: Any, batch_id: str | None) -> None:
    """
    A file's content relayed as it arrives; a batch's output read on the way, its usage
    entered once the whole file went through (before the client sees the end), unless it
    already was.
    """
    reader = None
    if batch_id is not None and await call.gateway.store.get_object(BATCH_USAGE,
                                                                    batch_id) is None:
        reader = UsageReader(call, batch_id)
    await call.relay(response, reader)


class UsageReader:
    """Reads a batch's output file as it is relayed; enters its usage at the end."""

    def __init__(self, call: NativeCall, batch_id: str) -> None:
        self._call = call
        self._batch_id = batch_id
        self._output = BatchOutput()

    def feed(self, chunk: bytes) -> None:
        self._output.feed(chunk)

    def ended(self) -> Deferred[None]:
        self._output.finish()
        return Deferred.fromCoroutine(enter_usage(
            self._call.gateway, self._batch_id, self._call.principal, self._output))
