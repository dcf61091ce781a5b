"""
``/v1/batches``: OpenAI's Batch API on the providers' own (native) batches.

A batch runs on the provider that holds its input file (`txgateway.web.files`), and belongs
to the caller's key.  Creating one checks the key's budget first; retrieve refreshes the
gateway's record from the provider (adopting the output and error files it made, so that
their content can be read through ``/v1/files``), cancel is forwarded, the list is the
caller's records.  ``/v1/batches/{id}/results`` answers 409 until the batch has ended, then
relays its output file; that read, or reading the output file's content, enters each
request's usage into the ledger, once per batch.
"""

from __future__ import annotations

from typing import Any

import orjson

from txgateway.admission import Refusal
from txgateway.dialects.openai import parse_object
from txgateway.web.batch_lines import BATCH, FILE
from txgateway.web.files import relay_content
from txgateway.web.native_objects import NativeCall, StoredObject, listed, run
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import Collection

#: Statuses of a batch that has ended: its output file (when it has one) is final.
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


async def _create(call: NativeCall) -> None:
    raw = call.request.content.getvalue()
    asked = parse_object(raw)
    for name in ("input_file_id", "endpoint", "completion_window"):
        if not isinstance(asked.get(name), str) or not asked[name]:
            raise Refusal(400, f"'{name}' is a required string", None, name)
    file_id = asked["input_file_id"]
    held = await call.gateway.store.get_object(FILE, file_id)
    if held is None or held["owner"] != call.owner:
        raise Refusal(404, f"No such File object: {file_id}", "not_found", "input_file_id")
    if "aliases" not in held:
        raise Refusal(400, f"the file {file_id} was not uploaded with purpose 'batch'",
                      "invalid_input_file", "input_file_id")
    provider = call.provider(held)
    await call.limited(0)
    response = await call.send(provider, "batches", b"POST", body=raw)
    status, body = await call.answer_of(response)
    if status == 200:
        batch = orjson.loads(body)
        await _save(call, {
            "owner": call.owner, "provider": provider.name, "provider_kind": provider.kind,
            "batch": batch, "aliases": held["aliases"],
            "upstream_models": held["upstream_models"]})
    await call.answer(status, body)


async def _save(call: NativeCall, held: dict[str, Any]) -> None:
    batch = held["batch"]
    await call.gateway.store.put_object(BATCH, batch["id"], held["owner"], held,
                                        batch.get("created_at") or 0)


class StoredBatch(StoredObject):
    openapi = Endpoint("OpenAI", {"GET": Operation("Retrieve a batch")}, below={
        "results": {"GET": Operation("Retrieve a batch's results", None,
                                     "application/jsonl")},
        "cancel": {"POST": Operation("Cancel a batch")}})
    """
    ``/v1/batches/{id}`` (GET), ``/v1/batches/{id}/cancel`` (POST) and
    ``/v1/batches/{id}/results`` (GET).
    """

    route = "batches"

    def render_GET(self, request: Any) -> Any:
        return self.serve(request, {b"": self._retrieve, b"results": self._results})

    def render_POST(self, request: Any) -> Any:
        return self.serve(request, {b"cancel": self._cancel})

    async def _retrieve(self, call: NativeCall) -> None:
        await call.answer(*await self._refreshed(call, await self._owned(call)))

    async def _cancel(self, call: NativeCall) -> None:
        held = await self._owned(call)
        response = await call.send(call.provider(held), "batches", b"POST",
                                   f"/{self._id}/cancel")
        status, body = await call.answer_of(response)
        if status == 200:
            held["batch"] = orjson.loads(body)
            await _save(call, held)
        await call.answer(status, body)

    async def _results(self, call: NativeCall) -> None:
        held = await self._owned(call)
        status, body = await self._refreshed(call, held)
        if status != 200:
            await call.answer(status, body)
            return
        batch = held["batch"]
        output = batch.get("output_file_id")
        if batch.get("status") not in ENDED:
            raise Refusal(409, "batch results are not ready yet (status: "
                          f"{batch.get('status')})", "batch_not_ready")
        if not output:
            raise Refusal(409, f"the batch has no results (status: {batch.get('status')})",
                          "batch_without_results")
        response = await call.send(call.provider(held), "files", b"GET", f"/{output}/content")
        await relay_content(call, response, self._id)

    async def _owned(self, call: NativeCall) -> dict[str, Any]:
        return await call.owned(BATCH, self._id, "Batch")

    async def _refreshed(self, call: NativeCall, held: dict[str, Any]) -> tuple[int, bytes]:
        """
        The batch as the provider has it now, saved into ``held`` and the store, with the
        files it made recorded for the batch's owner.
        """
        provider = call.provider(held)
        response = await call.send(provider, "batches", b"GET", f"/{self._id}")
        status, body = await call.answer_of(response)
        if status != 200:
            return status, body
        batch = held["batch"] = orjson.loads(body)
        for name in ("output_file_id", "error_file_id"):
            file_id = batch.get(name)
            if file_id and await call.gateway.store.get_object(FILE, file_id) is None:
                await self._adopt(call, held, file_id)
        await _save(call, held)
        return status, body

    async def _adopt(self, call: NativeCall, held: dict[str, Any], file_id: str) -> None:
        """Record a file the batch made, with its object from the provider."""
        response = await call.send(call.provider(held), "files", b"GET", f"/{file_id}")
        status, body = await call.answer_of(response)
        made = (orjson.loads(body) if status == 200
                else {"id": file_id, "object": "file", "purpose": "batch_output"})
        await call.gateway.store.put_object(FILE, file_id, held["owner"], {
            "owner": held["owner"], "provider": held["provider"],
            "provider_kind": held["provider_kind"], "file": made, "batch": self._id,
        }, made.get("created_at") or call.gateway.reactor.seconds())


class Batches(Collection):
    openapi = Endpoint("OpenAI", {"GET": Operation("List batches", None, "List"),
                                  "POST": Operation("Create a batch", "Object")},
                       item="{batch_id}")
    """``/v1/batches``: create (POST) and the caller's batches (GET); ids below."""

    route = "batches"
    item = StoredBatch

    def render_GET(self, request: Any) -> Any:
        return run(self._gateway, request, self.route,
                   lambda call: listed(call, BATCH, "batch", 20, 100))

    def render_POST(self, request: Any) -> Any:
        return run(self._gateway, request, self.route, _create)
