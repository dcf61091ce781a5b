"""
What the files and batches endpoints share: objects a provider holds (OpenAI's native files
and batches), reached through the gateway's record of each (kept in the store: which provider
holds it, whose key made it).

Each request runs as one exchange (`run`): the caller authenticated, the work done, errors
answered in OpenAI's shape, one access log line.  A key sees only its own objects: another
key's id answers 404, as an unknown id does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.server import NOT_DONE_YET

from txgateway.accounting import Exchange
from txgateway.admission import key_refused
from txgateway.auth import Principal, caller_key
from txgateway.dialects.errors import OPENAI, upstream_error
from txgateway.gateway import Gateway
from txgateway.providers import ApiCall, IProvider, UpstreamRequest, prepare
from txgateway.upstream import UpstreamCall
from txgateway.web.proxy import Refusal, answered
from txgateway.web.relay import Bytes, Peeking, Relay, start_relayed
from txgateway.web.runner import finish

log = Logger()


@attrs.frozen
class NativeCall:
    """One request on the files or batches API, as `run` hands it to its work."""

    gateway: Gateway
    request: Any
    exchange: Exchange
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
        self.exchange.provider = provider.name
        self.exchange.provider_kind = provider.kind
        return provider

    async def send(self, provider: IProvider, api: str, method: bytes, path: str = "",
                   body: Any = b"", content_type: bytes | None = None) -> Any:
        """
        ``method`` on the provider's own ``{api}{path}`` (``/files/file-abc/content``) with
        its credentials; the response once its headers are in.
        """
        preparing = prepare(provider)
        if preparing is not None:
            await preparing
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
        return await self.call.send(provider.agent, UpstreamRequest(method, url, headers, body))

    async def answer_of(self, response: Any) -> tuple[int, bytes]:
        """A whole JSON answer; an error made an OpenAI error object."""
        self.exchange.first_byte = self.gateway.reactor.seconds()
        body = await self.call.read(response)
        if response.code >= 300:
            return upstream_error(OPENAI, response.code, body, self.gateway.redactor)
        return response.code, body

    async def relay(self, response: Any, reader: Reader | None = None) -> None:
        """A 200's body relayed to the caller as it arrives, any other answered whole."""
        if response.code != 200:
            await self.answer(*await self.answer_of(response))
            return
        start_relayed(self.request, response)
        self.exchange.status = 200
        relay = Relay(self.gateway, self.request,
                      self.exchange, self.call, None,
                      Bytes() if reader is None else Peeking(reader), None,
                      None if reader is None else reader.ended)
        self.call.deliver(response, relay)
        await relay.done

    async def answer(self, status: int, body: bytes) -> None:
        self.exchange.status = status
        if status >= 400:
            self.exchange.error = f"upstream status {status}"
        finish(self.request, self.call, status, body)


Work = Callable[[NativeCall], Awaitable[Any]]
"""A request's work: answers through the `NativeCall`, or raises a `Refusal`."""


def run(gateway: Gateway, request: Any, route: str, work: Work) -> Any:
    """Do ``work`` for ``request`` as one exchange of ``route``; for ``render_*``."""
    exchange = gateway.accountant.start(route)
    request.setHeader(b"x-request-id", exchange.request_id.encode())
    call = UpstreamCall(gateway.reactor, gateway.config.upstream)
    request.notifyFinish().addErrback(lambda _: call.abort())
    Deferred.fromCoroutine(answered(gateway, request, exchange, call,
                                    _work(gateway, request, exchange, call, work)))
    return NOT_DONE_YET


async def _work(gateway: Gateway, request: Any, exchange: Exchange, call: UpstreamCall,
                work: Work) -> None:
    key = caller_key(request)
    principal = await gateway.authenticator.authenticate(key)
    if principal is None:
        raise Refusal(401, key_refused(key is not None), "invalid_api_key")
    exchange.key_id = principal.key_id
    await work(NativeCall(gateway, request, exchange, principal, call))


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


class Reader(Protocol):
    """Reads a relayed body on the side: ``feed`` each piece, ``ended`` once it is whole."""

    def feed(self, chunk: bytes) -> None: ...

    def ended(self) -> Deferred[None]:
        """Work done before the end reaches the client (which may then ask again)."""
