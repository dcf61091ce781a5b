"""
What the files and batches endpoints share: objects a provider holds (OpenAI's native files
and batches), reached through the gateway's record of each (kept in the store: which provider
holds it, whose key made it).

Each request runs as one exchange (`run`) on the runner's pieces: the caller authenticated,
each upstream call its provider's one-target `txgateway.web.runner.attempt`, errors answered
in OpenAI's shape (`txgateway.web.runner.settle`), one access log line from the `Tally`.  A
key sees only its own objects: another key's id answers 404, as an unknown id does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from txgateway.accounting import Exchange, Tally
from txgateway.admission import Caller, Refusal, key_refused, limited
from txgateway.auth import Principal, caller_key
from txgateway.dialects.errors import OPENAI, upstream_error
from txgateway.dialects.openai import error_body
from txgateway.gateway import Gateway
from txgateway.providers import ApiCall, IProvider, UpstreamRequest
from txgateway.routing import Target
from txgateway.upstream import UpstreamCall
from txgateway.web.relay import Bytes, Relay, start_relayed
from txgateway.web.resource import Item, NotFound
from txgateway.web.runner import attempt, finish, record_caller, serve

log = Logger()


@attrs.frozen
class NativeCall:
    """One request on the files or batches API, as `run` hands it to its work."""

    gateway: Gateway
    request: Any
    exchange: Exchange
    tally: Tally
    principal: Principal
    call: UpstreamCall

    @property
    def owner(self) -> str | None:
        return self.principal.key_id

    async def owned(self, kind: str, object_id: str, noun: str) -> dict[str, Any]:
        """The caller's record of ``object_id``, or a 404 `Refusal`."""
        held = await self.gateway.store.get_object(kind, object_id)
        if held is None or held["owner"] != self.owner:
            raise Refusal(404, f"No such {noun} object: {object_id}", "not_found")
        return held

    def provider(self, held: dict[str, Any]) -> IProvider:
        """The provider holding a recorded object; 502 when it is no longer configured."""
        provider = self.gateway.providers.get(held["provider"])
        if provider is None:
            raise Refusal(502, f"the provider `{held['provider']}` that holds this object is "
                          "no longer configured", "unknown_provider")
        self.tally.target = Target(provider, "")  # recorded even when the call goes no further
        return provider

    async def limited(self, tokens: int) -> None:
        """The limits step alone (`txgateway.admission.limited`): these calls name no model."""
        try:
            caller = await limited(self.gateway, self.principal, tokens)
        except Refusal as refusal:
            record_caller(self.request, self.exchange, refusal.caller)
            raise
        record_caller(self.request, self.exchange, caller)

    async def send(self, provider: IProvider, api: str, method: bytes, path: str = "",
                   body: Any = b"", content_type: bytes | None = None) -> Any:
        """
        ``method`` on the provider's own ``{api}{path}`` (``/files/file-abc/content``) with
        its credentials, as the runner's one-target `attempt` (a body streamed as it arrives
        is sent once); the response once its headers are in.
        """
        sent: list[Any] = []

        async def sending(target: Target) -> None:
            base = provider.build_request(ApiCall(api=api, body=b"", parsed={}, model="",
                                                  stream=False))
            url, _, query = base.url.partition(b"?")
            headers = base.headers
            if content_type is not None:
                headers = headers.copy()
                headers.setRawHeaders(b"content-type", [content_type])
            url += path.encode()
            if query:
                url += b"?" + query
            response = await self.call.send(provider.agent,
                                            UpstreamRequest(method, url, headers, body))
            self.tally.status = response.code
            sent.append(response)

        await attempt(self.gateway, self.request, self.tally, [Target(provider, "")],
                      self.call, sending, None if isinstance(body, bytes) else 0)
        return sent[-1]

    async def answer_of(self, response: Any) -> tuple[int, bytes]:
        """A whole JSON answer; an error made an OpenAI error object."""
        self.tally.first_byte = self.gateway.reactor.seconds()
        body = await self.call.read(response)
        if response.code >= 300:
            return upstream_error(OPENAI, response.code, body, self.gateway.redactor)
        return response.code, body

    async def relay(self, response: Any, meter: Bytes | None = None,
                    save: Callable[[], Deferred[Any] | None] | None = None) -> None:
        """
        A 200's body relayed to the caller as it arrives, through ``meter`` when given (and
        ``save`` run before its end reaches the caller); any other answered whole.
        """
        if response.code != 200:
            await self.answer(*await self.answer_of(response))
            return
        start_relayed(self.request, response)
        self.tally.status = 200
        relay = Relay(self.gateway, self.request, self.tally, self.call, None,
                      meter or Bytes(), None, save)
        self.call.deliver(response, relay)
        await relay.done

    async def answer(self, status: int, body: bytes) -> None:
        self.tally.status = status
        if status >= 400:
            self.tally.error = f"upstream status {status}"
        finish(self.request, self.call, status, body)


Work = Callable[[NativeCall], Awaitable[Any]]
"""A request's work: answers through the `NativeCall`, or raises a `Refusal`."""


def run(gateway: Gateway, request: Any, route: str, work: Work) -> Any:
    """Do ``work`` for ``request`` as one exchange of ``route``; for ``render_*``."""
    return serve(gateway, request, route, lambda exchange, tally, call:
                 _work(gateway, request, exchange, tally, call, work), error_body)


async def _work(gateway: Gateway, request: Any, exchange: Exchange, tally: Tally,
                call: UpstreamCall, work: Work) -> None:
    key = caller_key(request)
    principal = await gateway.authenticator.authenticate(key)
    if principal is None:
        raise Refusal(401, key_refused(key is not None), "invalid_api_key")
    record_caller(request, exchange, Caller(principal.key_id))
    await work(NativeCall(gateway, request, exchange, tally, principal, call))


class StoredObject(Item):
    """
    A recorded object (``/v1/files/{id}``, ``/v1/batches/{id}``...): a method's work chosen by
    the path below the object (``b""`` for the object itself), unknown paths answered 404.
    """

    route = ""

    def serve(self, request: Any, works: Mapping[bytes, Work]) -> Any:
        work = works.get(b"/".join(request.postpath))
        if work is None:
            return NotFound().render(request)
        return run(self._gateway, request, self.route, work)


async def listed(call: NativeCall, kind: str, member: str, default_limit: int,
                 max_limit: int, keep: Callable[[dict[str, Any]], bool] = lambda _: True
                 ) -> None:
    """
    Answers an OpenAI list of the caller's records of ``kind`` (their ``member`` object)
    newest first unless ``order=asc``, ``limit`` at a time after the id ``after``.
    """
    order = argument(call.request, b"order") or "desc"
    if order not in ("asc", "desc"):
        raise Refusal(400, "'order' must be 'asc' or 'desc'", None, "order")
    try:
        limit = int(argument(call.request, b"limit") or default_limit)
    except ValueError:
        raise Refusal(400, "'limit' must be an integer", None, "limit") from None
    if not 1 <= limit <= max_limit:
        raise Refusal(400, f"'limit' must be between 1 and {max_limit}", None, "limit")
    after = argument(call.request, b"after")
    store = call.gateway.store
    if after is not None and await _not_yours(store, kind, after, call.owner):
        raise Refusal(404, f"No such object to list after: {after}", "not_found", "after")
    found: list[dict[str, Any]] = []
    while len(found) <= limit:
        # Open gateways (no key) list every owner's records: keep the caller's alone.
        page = await store.list_objects(kind, call.owner, after, limit + 1, order)
        found += [held[member] for held in page if held["owner"] == call.owner and keep(held)]
        if len(page) <= limit:
            break
        after = page[-1][member]["id"]
    data = found[:limit]
    await call.answer(200, orjson.dumps({
        "object": "list", "data": data, "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None, "has_more": len(found) > limit}))


async def _not_yours(store: Any, kind: str, object_id: str, owner: str | None) -> bool:
    held = await store.get_object(kind, object_id)
    return held is None or held["owner"] != owner


def argument(request: Any, name: bytes) -> str | None:
    values = request.args.get(name)
    return values[0].decode("utf-8", "replace") if values else None
