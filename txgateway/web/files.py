"""
``/v1/files``: OpenAI's Files API on the providers' own (native) files APIs.

The gateway hosts no file: an upload goes to a provider that serves files and the gateway
records which one, for the caller's key.  Which provider: for ``purpose=batch``, the one
every line's model routes to (`txgateway.web.batch_lines.BatchInput`, aliases rewritten to
upstream models on the way); for other purposes, ``?provider=``, or the only provider that
serves files.  Retrieve and delete are forwarded to that provider; the content is relayed as
it arrives (a batch's output file has its usage entered into the ledger on the way, once);
the list is the caller's records.

The upload goes upstream as it arrives (`txgateway.web.upload`): the form as the caller
wrote it, sent once the file part begins; for a batch file, sent once its first line has
routed it, its lines rewritten as they complete (`Upload.rewrite`, chunked upstream).  An
upload refused on the way (a bad line, over ``max_body_bytes``) fails the upstream call, whose
connection is dropped before the form is whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from twisted.internet.defer import Deferred

from txgateway.admission import Refusal
from txgateway.dialects.multipart import FormParser, PartHead, boundary_of
from txgateway.web.batch_lines import BATCH_USAGE, FILE, BatchInput, BatchOutput, enter_usage
from txgateway.web.native_objects import NativeCall, StoredObject, argument, listed, run
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.relay import Bytes
from txgateway.web.resource import Collection
from txgateway.web.upload import Upload


class FileForm:
    """
    An upload form as it arrives (the upload's `txgateway.web.upload.BodyWatcher`, and its
    parser's `FormParts`): text fields, then one file part, after ``purpose``.  ``head``
    fires once the upload can be sent: at the file part, or for a batch file (``lines``) once
    its first line is routed (``lines.provider``); or fails with why the upload failed.
    """

    def __init__(self, upload: Upload, boundary: bytes,
                 batch_input: Callable[[], BatchInput]) -> None:
        self.upload = upload
        self.head: Deferred[None] = Deferred()
        self.lines: BatchInput | None = None
        self._batch_input = batch_input
        self._boundary = boundary
        self._parser = FormParser(boundary, self)
        self._has_file = False
        upload.read_ahead(True)
        upload.watch(self)

    # What the upload tells.

    def received(self, data: bytes) -> None:
        self._parser.feed(data)

    def ended(self) -> None:
        self._parser.close()
        if "purpose" not in self._parser.fields:
            raise Refusal(400, "the multipart field 'purpose' is required", None, "purpose")
        if not self._has_file:
            raise Refusal(400, "the multipart field 'file' is required", None, "file")
        if self.lines is not None:
            self.upload.emit(b"\r\n--" + self._boundary + b"--\r\n")

    def failed(self, error: Exception) -> None:
        if not self.head.called:
            self.head.errback(error)

    # What the parser hands over.

    def part_started(self, head: PartHead) -> None:
        if self.lines is not None:  # a part after a batch file: sent after its lines
            self.upload.emit(b"\r\n--" + self._boundary + b"\r\n" + head.raw + b"\r\n\r\n")
        if head.filename is None:
            return
        if head.name != "file" or self._has_file:
            raise Refusal(400, f"unexpected file part '{head.name}': send one, named 'file'",
                          None, head.name)
        purpose = self._parser.fields.get("purpose")
        if purpose is None:
            raise Refusal(400, "the multipart field 'purpose' must come before 'file'", None,
                          "purpose")
        self._has_file = True
        if purpose == "batch":
            self.lines = self._batch_input()
            self.upload.rewrite(head.start)
        self._routable()

    def part_data(self, chunk: bytes) -> None:
        if self.lines is None:
            return
        if self._parser.in_file:
            self.upload.emit(self.lines.feed(chunk))
            self._routable()
        else:
            self.upload.emit(chunk)

    def part_ended(self) -> None:
        if self.lines is not None and self._parser.in_file:
            self.upload.emit(self.lines.finish())
            self._routable()

    def _routable(self) -> None:
        if not self.head.called and (self.lines is None or self.lines.provider is not None):
            self.upload.read_ahead(False)
            self.head.callback(None)


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
    upload = request.upload or Upload.whole(request.content.getvalue())
    form = FileForm(upload, boundary,
                    lambda: BatchInput(gateway.router.plan, call.principal, pinned))
    await form.head
    provider = form.lines.provider if form.lines is not None else pinned
    if provider is None:
        serving = [one for one in gateway.providers.values() if "files" in one.apis]
        if len(serving) != 1:
            names = ", ".join(sorted(one.name for one in serving)) or "none"
            raise Refusal(400, "name the provider to hold the file with ?provider= (those "
                          f"serving files: {names})", "provider_required", "provider")
        provider = serving[0]
    response = await call.send(provider, "files", b"POST", body=upload.producer(),
                               content_type=content_type)
    status, answer = await call.answer_of(response)
    if status == 200:
        made = orjson.loads(answer)
        held: dict[str, Any] = {"owner": call.owner, "provider": provider.name,
                                "provider_kind": provider.kind, "file": made}
        if form.lines is not None:
            held["aliases"] = form.lines.aliases
            held["upstream_models"] = form.lines.upstream_models
        await gateway.store.put_object(FILE, made["id"], call.owner, held,
                                       made.get("created_at") or gateway.reactor.seconds())
    await call.answer(status, answer)


class StoredFile(StoredObject):
    openapi = Endpoint("OpenAI", {
        "GET": Operation("Retrieve a file's description"),
        "DELETE": Operation("Delete a file")}, below={
        "content": {"GET": Operation("Retrieve a file's content", None,
                                     "application/octet-stream")}})
    """``/v1/files/{id}`` (GET, DELETE) and ``/v1/files/{id}/content`` (GET)."""

    route = "files"

    def render_GET(self, request: Any) -> Any:
        return self.serve(request, {b"": self._retrieve, b"content": self._content})

    def render_DELETE(self, request: Any) -> Any:
        return self.serve(request, {b"": self._delete})

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


class Files(Collection):
    openapi = Endpoint("OpenAI", {"GET": Operation("List files", None, "List"),
                                  "POST": Operation("Upload a file", "form")}, item="{file_id}")
    """``/v1/files``: upload (POST) and the caller's files (GET); ids below."""

    route = "files"
    item = StoredFile
    #: The site streams its bodies (`txgateway.web.upload`).
    streams_upload = True

    def render_GET(self, request: Any) -> Any:
        purpose = argument(request, b"purpose")
        return run(self._gateway, request, self.route, lambda call: listed(
            call, FILE, "file", 10_000, 10_000,
            lambda held: purpose is None or held["file"].get("purpose") == purpose))

    def render_POST(self, request: Any) -> Any:
        return run(self._gateway, request, self.route, _upload)


async def relay_content(call: NativeCall, response: Any, batch_id: str | None) -> None:
    """
    A file's content relayed as it arrives; a batch's output read on the way, its usage
    entered once the whole file went through (before the client sees the end), unless it
    already was.
    """
    if batch_id is not None and await call.gateway.store.get_object(BATCH_USAGE,
                                                                    batch_id) is None:
        reader = UsageReader(call, batch_id)
        await call.relay(response, reader, reader.ended)
        return
    await call.relay(response)


class UsageReader(Bytes):
    """
    The meter of a batch's output file as it is relayed (its bytes as they came): enters its
    usage at the end.
    """

    def __init__(self, call: NativeCall, batch_id: str) -> None:
        self._call = call
        self._batch_id = batch_id
        self._output = BatchOutput()

    def feed(self, data: bytes) -> bytes:
        self._output.feed(data)
        return data

    def ended(self) -> Deferred[None]:
        self._output.finish()
        return Deferred.fromCoroutine(enter_usage(
            self._call.gateway, self._batch_id, self._call.principal, self._output))
