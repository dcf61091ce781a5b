"""
``POST /v1/responses`` and the stored responses under ``/v1/responses/{id}``: OpenAI's
Responses API, for any provider.

A provider that serves the Responses API itself (``"responses"`` in its ``apis``) gets the
caller's body as it came (the model aside) and its answer comes back untouched, usage read on
the side; the gateway only remembers which provider made each response id, so that follow-ups
(``previous_response_id``, retrieve, delete) reach the upstream that holds it.  Any other
provider is called through chat completions (`txgateway.translate.responses_to_chat`), and
the gateway keeps the response in its store so that the stored-response API works there too.

A ``conversation`` is the gateway's (`txgateway.web.conversations`) whatever the provider:
its items are sent as the history, as a gateway-held ``previous_response_id`` chain is, and a
successful response's input and output items are appended to it before the caller has the
answer's end.

What only the gateway can read never reaches a native provider as is: an input
``item_reference`` to an item the gateway holds (in the history, or of a response it made and
stored) is replaced by a copy of the item, whatever the provider; a compaction item the
gateway made (`txgateway.web.responses_input`) becomes the developer message it stands for.
References the gateway cannot resolve go to a native provider as they came (the upstream may
hold the item) and are refused for the others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import orjson
from twisted.internet.defer import Deferred, gatherResults
from zope.interface import implementer

from txgateway.accounting import Exchange
from txgateway.admission import Refusal, key_refused
from txgateway.auth import caller_key
from txgateway.dialects.errors import OPENAI, upstream_error
from txgateway.dialects.openai import (
    BadRequest,
    error_body,
    loads_object,
    model_of,
    parse_object,
)
from txgateway.dialects.shapes import WrongShape
from txgateway.gateway import Gateway
from txgateway.providers import (
    OPENAI_WIRE,
    ApiCall,
    ITranslatingProvider,
    UpstreamRequest,
    speaks,
    translating,
)
from txgateway.routing import Target
from txgateway.streams import EventSplitter, data_of, events
from txgateway.translate.chain import ChainedStream
from txgateway.translate.responses_to_chat import (
    ChatToResponsesStream,
    UntranslatableRequest,
    chat_request,
    check_input,
    compaction_message,
    conversation_reference,
    input_items,
    new_id,
    own_compaction,
    reference_of,
    response_from_chat,
    stored_items,
)
from txgateway.upstream import UpstreamCall, UpstreamError
from txgateway.usage import Usage
from txgateway.web import conversations
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import JSONResource, answer_later, openai_error
from txgateway.web.runner import CallEndpoint, ICodec, IKeepingCodec, stream_type

#: Store kinds: a response the gateway made (translated), each of its input and output items
#: (for ``item_reference``), and which provider made a native one.
RESPONSE, RESPONSE_ITEM, ROUTE = "response", "response_item", "response_route"
#: The statuses of a response whose turn joins its conversation.
ENDED_WELL = ("completed", "incomplete")


@attrs.define
class ResponsesRequest:
    """
    A Responses request, parsed once.  Changed only when it is admitted (the caller's key is
    known then): ``owner`` set to that key's id; ``history`` set to the items of the
    gateway-held chain ``previous_response_id`` names, or of the ``conversation`` (its id);
    and the input's references to items the gateway holds resolved (`with_input`).
    """

    raw: bytes
    parsed: dict[str, Any]
    model: str
    stream: bool
    store: bool
    conversation: str | None = None
    #: The caller's key id, who owns what the call leaves behind.
    owner: str | None = None
    history: list[dict[str, Any]] | None = None

    def with_input(self, items: list[dict[str, Any]]) -> None:
        """The request as if the caller had sent ``items`` as its input."""
        self.parsed = {**self.parsed, "input": items}
        self.raw = orjson.dumps(self.parsed)


def parse_responses(raw: bytes) -> ResponsesRequest:
    parsed = parse_object(raw)
    model = model_of(parsed)
    try:
        check_input(parsed.get("input", ""))
    except WrongShape as wrong:
        raise BadRequest(f"Invalid type for '{wrong.param()}': {wrong}", wrong.param()) from None
    for name in ("stream", "store"):
        if parsed.get(name) is not None and not isinstance(parsed[name], bool):
            raise BadRequest(f"'{name}' must be a boolean", name)
    previous = parsed.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        raise BadRequest("'previous_response_id' must be a string", "previous_response_id")
    conversation = conversation_reference(parsed.get("conversation"))
    if parsed.get("conversation") is not None and conversation is None:
        raise BadRequest("'conversation' must be a conversation id or an object with its 'id'",
                         "conversation")
    if conversation is not None and previous:
        raise BadRequest("Mutually exclusive parameters: ensure you are only providing one of "
                         "'previous_response_id' or 'conversation'.", "conversation")
    return ResponsesRequest(raw=raw, parsed=parsed, model=model,
                            stream=bool(parsed.get("stream")),
                            store=parsed.get("store") is not False,
                            conversation=None if conversation is None else conversation["id"])


def chain_items(held: dict[str, Any]) -> list[dict[str, Any]]:
    """The conversation a stored response ends: its history, its input, its output."""
    return [*held["history"], *held["input"], *held["response"]["output"]]


def native_responses(target: Target) -> bool:
    provider = target.provider
    return "responses" in provider.apis and speaks(provider, OPENAI_WIRE, target.model)


def _stream_error(status: int, message: str, code: str) -> bytes:
    """A Responses ``error`` event: the openai SDK raises ``APIError`` when it reads one."""
    event = {"type": "error", "code": code, "message": message, "param": None,
             "sequence_number": 0}
    return b"event: error\ndata: " + orjson.dumps(event) + b"\n\n"


class Responses(CallEndpoint):
    isLeaf = False  # the stored responses hang below it
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Create a response", "ResponseRequest", "Response")}, item="{response_id}")
    route = "responses"
    parse = staticmethod(parse_responses)
    error_body = staticmethod(error_body)
    error_event = staticmethod(_stream_error)

    def getChild(self, path: bytes, request: Any) -> Any:
        return StoredResponse(self._gateway, path.decode("utf-8", "replace"))

    def codec(self, request: Any, parsed: ResponsesRequest, target: Target) -> ICodec:
        if native_responses(target):
            return NativeResponses(self._gateway, parsed, target)
        return ResponsesOverChat(self._gateway, parsed, target)

    async def admit(self, request: Any, exchange: Exchange, parsed: ResponsesRequest,
                    size: int) -> list[Target]:
        """
        As every endpoint, then: a conversation lends its items; a previous response pins the
        call or lends its history; references to items the gateway holds are resolved.
        """
        plan = await super().admit(request, exchange, parsed, size)
        parsed.owner = exchange.key_id
        plan = await self._lend_history(plan, parsed)
        inputs = parsed.parsed.get("input")
        if isinstance(inputs, list) and any(map(reference_of, inputs)):
            await self._resolve_references(parsed, inputs)
        return plan

    async def _lend_history(self, plan: list[Target], parsed: ResponsesRequest) -> list[Target]:
        """The ``plan``, pinned to a previous response's provider; the history set."""
        store = self._gateway.store
        if parsed.conversation is not None:
            if await conversations.find(store, parsed.conversation, parsed.owner) is None:
                raise conversations.not_found(parsed.conversation)
            parsed.history = await conversations.history(store, parsed.conversation)
            return plan
        previous = parsed.parsed.get("previous_response_id")
        if not previous:
            return plan
        held = await store.get_object(RESPONSE, previous)
        if held is not None and held["owner"] == parsed.owner:
            parsed.history = chain_items(held)
            return plan
        route = await store.get_object(ROUTE, previous)
        if route is None or route["owner"] != parsed.owner:
            return plan  # not one the gateway knows: the upstream judges it
        pinned = [target for target in plan if target.provider.name == route["provider"]]
        if not pinned:
            raise Refusal(400, f"the previous response was made by the provider "
                          f"`{route['provider']}`, which the model `{parsed.model}` does "
                          "not route to", "invalid_previous_response", "previous_response_id")
        return pinned

    async def _resolve_references(self, parsed: ResponsesRequest, inputs: list[Any]) -> None:
        """
        Each input ``item_reference`` to an item of the history, or of a response the gateway
        made for the same key, replaced by a copy of the item (without its id and status: it
        is a new input item); the others are left as they came.
        """
        wanted = {reference for reference in map(reference_of, inputs) if reference}
        found = {item["id"]: item for item in parsed.history or []
                 if item.get("id") in wanted}
        for reference in wanted - found.keys():
            held = await self._gateway.store.get_object(RESPONSE_ITEM, reference)
            if held is not None and held["owner"] == parsed.owner:
                found[reference] = held["item"]
        if found:
            references = map(reference_of, inputs)
            parsed.with_input([_without_id(found[reference]) if reference in found else item
                               for item, reference in zip(inputs, references, strict=True)])


@implementer(ICodec)
class NativeCall:
    """
    The identity codec of the Responses API and of the calls below it (``path``:
    ``/input_tokens``, ``/compact``), to a provider that serves it: the caller's body upstream
    (`_native_body`), the answer and the stream's events back as they came, usage read on the
    side.
    """

    def __init__(self, target: Target, path: bytes = b"") -> None:
        self._path = path
        self.stream_type = stream_type(target.provider)

    def request(self, parsed: ResponsesRequest, target: Target) -> UpstreamRequest:
        return native_request(parsed, target, self._path)

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        return body, Usage.from_responses(_answer_object(body).get("usage"))

    def error(self, status: int, body: bytes) -> bytes:
        return body

    def transcoder(self, parsed: ResponsesRequest) -> Any:
        return ResponsesEvents(None)


class _Keeping:
    """
    What the codecs of ``/v1/responses`` share: the response they made (`_made`, or their
    stream's once it ended) kept (`keep`) before the caller has the answer's end.
    """

    _gateway: Gateway
    _parsed: ResponsesRequest
    #: The provider holding the response (a native one), None when the gateway made it.
    _provider: Any = None
    _made: dict[str, Any] | None = None
    #: The stream's transcoder, which shows the response it made once it ended.
    _events: Any = None

    def kept(self) -> Deferred[Any] | None:
        made = self._made if self._events is None else self._events.response
        if made is None:
            return None
        return keep(self._gateway, self._parsed, made, self._provider)


@implementer(IKeepingCodec)
class NativeResponses(_Keeping, NativeCall):
    """
    `NativeCall` of ``/v1/responses``: a gateway-held conversation shown in the answer and the
    stream (the upstream never saw it), and which provider made the response remembered.
    """

    #: The upstream numbers its stream's events; a break the gateway says is numbered 0.
    error_event = staticmethod(_stream_error)

    def __init__(self, gateway: Gateway, parsed: ResponsesRequest, target: Target) -> None:
        super().__init__(target)
        self._gateway = gateway
        self._parsed = parsed
        self._provider = target.provider

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        answer = self._made = _answer_object(body)
        if self._parsed.conversation is not None:
            answer["conversation"] = conversation_reference(self._parsed.conversation)
            body = orjson.dumps(answer)
        return body, Usage.from_responses(answer.get("usage"))

    def transcoder(self, parsed: ResponsesRequest) -> Any:
        self._events = ResponsesEvents(conversation_reference(parsed.conversation))
        return self._events


@implementer(IKeepingCodec)
class ResponsesOverChat(_Keeping):
    """
    The codec of ``/v1/responses`` to any other provider: through OpenAI chat completions, the
    internal shape (a provider of a third dialect translates that in turn); the response the
    gateway made is kept in its store.
    """

    def __init__(self, gateway: Gateway, parsed: ResponsesRequest, target: Target) -> None:
        self._gateway = gateway
        self._parsed = parsed
        self._model = target.model
        self._translator = translating(target.provider, OPENAI_WIRE, target.model)
        self._id = new_id("resp")
        self.stream_type = stream_type(target.provider)

    def request(self, parsed: ResponsesRequest, target: Target) -> UpstreamRequest:
        chat = chat_of(parsed, target, chat_request)
        return target.provider.build_request(ApiCall(
            api="chat", body=orjson.dumps(chat), parsed=chat, model=target.model,
            stream=parsed.stream))

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        self._made, usage = response_from_chat(
            self._parsed.parsed, chat_completion(self._translator, body), self._id, self._model)
        return orjson.dumps(self._made), usage

    def error(self, status: int, body: bytes) -> bytes:
        return chat_error(self._translator, status, body)

    def transcoder(self, parsed: ResponsesRequest) -> Any:
        events = self._events = ChatToResponsesStream(parsed.parsed, self._id, self._model)
        if self._translator is None:
            return events
        return ChainedStream(self._translator.stream_translator(True), events)

    def error_event(self, status: int, message: str, code: str) -> bytes:
        """The break's ``error`` event, numbered next in the stream the gateway made."""
        numbered: bytes = self._events.error_event(status, message, code)
        return numbered


def native_request(parsed: ResponsesRequest, target: Target,
                   path: bytes = b"") -> UpstreamRequest:
    """The call on the provider's own ``/responses`` (or a ``path`` below it)."""
    try:
        body = _native_body(parsed, target.model)
    except UntranslatableRequest as error:
        raise Refusal(400, str(error), None, error.param) from None
    upstream = target.provider.build_request(ApiCall(
        api="responses", body=body, parsed=parsed.parsed, model=target.model,
        stream=parsed.stream))
    if not path:
        return upstream
    url, mark, query = upstream.url.partition(b"?")
    return attrs.evolve(upstream, url=url + path + mark + query)


def chat_of(parsed: ResponsesRequest, target: Target,
            translate: Callable[[dict[str, Any], list[dict[str, Any]], str], dict[str, Any]]
            ) -> dict[str, Any]:
    """The chat request ``translate`` makes of the call, or a 400 `Refusal`."""
    provider = target.provider
    if "chat" not in provider.apis:
        raise Refusal(400, f"the model `{parsed.model}` is served by the provider "
                      f"`{provider.name}`, which offers neither the responses nor the "
                      "chat API", "unsupported_api", "model")
    try:
        return translate(parsed.parsed, parsed.history or [], target.model)
    except UntranslatableRequest as error:
        raise Refusal(400, str(error), "unsupported_parameter", error.param) from None


def chat_completion(translator: ITranslatingProvider | None, body: bytes) -> dict[str, Any]:
    """
    A whole chat answer in OpenAI's format, translated first from a ``translator``'s dialect;
    `ValueError` when it is no JSON object.
    """
    if translator is not None:
        body = translator.translate_response(body)[0]
    return _answer_object(body)


def chat_error(translator: ITranslatingProvider | None, status: int, body: bytes) -> bytes:
    """A chat call's error answer, translated first from a ``translator``'s dialect."""
    if translator is None:
        return body
    return translator.translate_error(status, body) or body


def keep(gateway: Gateway, parsed: ResponsesRequest, answer: dict[str, Any],
         provider: Any = None) -> Deferred[Any]:
    """
    What a response leaves behind: the response itself and each of its items when the
    gateway made it (no ``provider``), or which provider did; and, once it ended well, its
    turn (input and output items) in its conversation.
    """
    store, owner = gateway.store, parsed.owner
    now = gateway.reactor.seconds()
    inputs = stored_items(input_items(parsed.parsed.get("input")))
    savings = []
    if parsed.store and answer.get("id"):
        if provider is None:
            document = {"owner": owner, "response": answer, "input": inputs,
                        "history": parsed.history or []}
            savings.append(store.put_object(RESPONSE, answer["id"], owner, document,
                                            answer["created_at"]))
            savings += [store.put_object(RESPONSE_ITEM, item["id"], owner,
                                         {"owner": owner, "item": item}, now)
                        for item in response_items(document)]
        else:
            savings.append(store.put_object(ROUTE, answer["id"], owner,
                                            {"provider": provider.name, "owner": owner}, now))
    if parsed.conversation is not None and answer.get("status") in ENDED_WELL:
        turn = [*inputs, *stored_items(answer.get("output") or [])]
        savings.append(conversations.append(store, parsed.conversation, owner, turn, now))
    return gatherResults(savings, consumeErrors=True)


def response_items(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The items of a stored response that ``item_reference`` can name: its input and output."""
    items = [*document["input"], *document["response"]["output"]]
    return [item for item in items if item.get("id") and reference_of(item) is None]


def _without_id(item: dict[str, Any]) -> dict[str, Any]:
    """An item sent again as input: the upstream knows neither its id nor its status."""
    if reference_of(item) is not None:
        return item  # an unresolved reference is its id
    return {key: value for key, value in item.items() if key not in ("id", "status")}


def _native_body(parsed: ResponsesRequest, upstream_model: str) -> bytes:
    """
    The caller's bytes, unless the model is renamed, a gateway-held chain or conversation is
    inlined, or the input holds compaction items the gateway made (`UntranslatableRequest`
    when one is damaged).
    """
    changes: dict[str, Any] = {}
    if upstream_model != parsed.model:
        changes["model"] = upstream_model
    inputs = input_items(parsed.parsed.get("input"))
    if parsed.history is not None or any(map(own_compaction, inputs)):
        # The upstream never saw the previous response or the conversation: send the items.
        changes["input"] = [
            compaction_message(item) if own_compaction(item) else item
            for item in [*map(_without_id, parsed.history or []), *inputs]]
    if not changes:
        return parsed.raw
    inlined = ("previous_response_id", "conversation") if parsed.history is not None else ()
    return orjson.dumps({key: value for key, value in {**parsed.parsed, **changes}.items()
                         if key not in inlined})


def _answer_object(body: bytes) -> dict[str, Any]:
    """A 200's body, which must be a JSON object (`ValueError` otherwise)."""
    answer = loads_object(body)
    if answer is None:
        raise ValueError("not a JSON object")
    return answer


def _with_data(event: bytes, data: bytes) -> bytes:
    """An SSE event with its data replaced, its other lines (``event:``...) kept."""
    lines = [line for line in event.split(b"\n") if not line.startswith(b"data:")]
    return b"\n".join([*lines, b"data: " + data])


class ResponsesEvents:
    """
    The same-dialect transcoder (`txgateway.web.relay.ITranscoder`) of a Responses stream:
    events as they came, looked into only where the bytes say a response object is (its id,
    its usage in the final event); with a ``conversation``, those are rewritten to show it, as
    the upstream never saw it.
    """

    error = None

    def __init__(self, conversation: dict[str, Any] | None) -> None:
        self._splitter = EventSplitter()
        self._conversation = conversation
        #: The response object as last shown: created, then completed (or failed...).
        self.response: dict[str, Any] | None = None
        self.usage: Usage | None = None
        #: One per text delta, after a first that carries none (as chat chunks count).
        self.chunks = 1
        #: Whether the response's last event (completed, incomplete or failed) went by.
        self.complete = False

    def feed(self, data: bytes) -> bytes:
        run = self._splitter.feed(data)
        if not run:
            return run
        self.chunks += run.count(b'"response.output_text.delta"')
        if b'"response"' in run:
            run = self._look_into(run)
        return run

    def _look_into(self, run: bytes) -> bytes:
        out = []
        for event in events(run):
            payload = loads_object(data_of(event))
            if payload is not None and isinstance(payload.get("response"), dict):
                response = self.response = payload["response"]
                self.complete = response.get("status") in ("completed", "incomplete", "failed")
                usage = Usage.from_responses(response.get("usage"))
                if usage is not None:
                    self.usage = usage
                if self._conversation is not None:
                    response["conversation"] = self._conversation
                    event = _with_data(event, orjson.dumps(payload))
            out.append(event + b"\n\n")
        return run if self._conversation is None else b"".join(out)

    def finish(self) -> bytes:
        return self._splitter.pending


class StoredResponse(JSONResource):
    openapi = Endpoint("OpenAI", {
        "GET": Operation("Retrieve a response", None, "Response"),
        "DELETE": Operation("Delete a response")}, below={
        "input_items": {"GET": Operation("List a response's input items", None, "List")},
        "cancel": {"POST": Operation("Cancel a background response", None, "Response")}})
    """
    ``/v1/responses/{id}`` (GET, DELETE), ``.../input_items`` (GET) and ``.../cancel``
    (POST): answered from the store for responses the gateway made, forwarded to the
    provider that made it for the others, to the caller's key only.
    """

    isLeaf = True

    def __init__(self, gateway: Gateway, response_id: str) -> None:
        super().__init__()
        self._gateway = gateway
        self._id = response_id

    def render_GET(self, request: Any) -> Any:
        if request.postpath in ([], [b""]):
            return answer_later(request, self._retrieve(request))
        if request.postpath == [b"input_items"]:
            return answer_later(request, self._input_items(request))
        return openai_error(request, 404, "Invalid URL", "unknown_url")

    def render_DELETE(self, request: Any) -> Any:
        if request.postpath not in ([], [b""]):
            return openai_error(request, 404, "Invalid URL", "unknown_url")
        return answer_later(request, self._delete(request))

    def render_POST(self, request: Any) -> Any:
        if request.postpath != [b"cancel"]:
            return openai_error(request, 404, "Invalid URL", "unknown_url")
        return answer_later(request, self._cancel(request))

    async def _find(self, request: Any) -> _Found:
        """The response the id names, held here or at the provider that made it."""
        key = caller_key(request)
        principal = await self._gateway.authenticator.authenticate(key)
        if principal is None:
            return _Found(refusal=(401, error_body(401, key_refused(key is not None),
                                                   "invalid_api_key")))
        store = self._gateway.store
        held = await store.get_object(RESPONSE, self._id)
        if held is not None and held["owner"] == principal.key_id:
            return _Found(held=held)
        route = await store.get_object(ROUTE, self._id)
        if route is not None and route["owner"] == principal.key_id:
            provider = self._gateway.providers.get(route["provider"])
            if provider is not None:
                return _Found(provider=provider)
        return _Found(refusal=(404, error_body(404, f"No response found with id '{self._id}'.",
                                               None)))

    async def _retrieve(self, request: Any) -> tuple[int, Any]:
        found = await self._find(request)
        if found.held is not None:
            return 200, found.held["response"]
        if found.provider is not None:
            return await self._forward(request, found.provider)
        return found.refusal

    async def _delete(self, request: Any) -> tuple[int, Any]:
        found = await self._find(request)
        if found.held is not None:
            store = self._gateway.store
            await store.delete_object(RESPONSE, self._id)
            await gatherResults([store.delete_object(RESPONSE_ITEM, item["id"])
                                 for item in response_items(found.held)], consumeErrors=True)
            return 200, {"id": self._id, "object": "response", "deleted": True}
        if found.provider is not None:
            status, body = await self._forward(request, found.provider)
            if status == 200:
                await self._gateway.store.delete_object(ROUTE, self._id)
            return status, body
        return found.refusal

    async def _input_items(self, request: Any) -> tuple[int, Any]:
        found = await self._find(request)
        if found.provider is not None:
            return await self._forward(request, found.provider)
        if found.held is None:
            return found.refusal
        items = list(found.held["input"])
        order = _argument(request, b"order") or "desc"
        if order not in ("asc", "desc"):
            return 400, error_body(400, "'order' must be 'asc' or 'desc'", None, "order")
        if order == "desc":
            items.reverse()
        after = _argument(request, b"after")
        if after:
            ids = [item.get("id") for item in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        try:
            limit = int(_argument(request, b"limit") or 20)
        except ValueError:
            return 400, error_body(400, "'limit' must be an integer", None, "limit")
        page = items[:max(1, min(limit, 100))]
        return 200, {"object": "list", "data": page,
                     "first_id": page[0]["id"] if page else None,
                     "last_id": page[-1]["id"] if page else None,
                     "has_more": len(items) > len(page)}

    async def _cancel(self, request: Any) -> tuple[int, Any]:
        found = await self._find(request)
        if found.held is not None:
            return 400, error_body(400, "cancelling a response is not supported for this "
                                   "provider: it makes no background responses", None)
        if found.provider is not None:
            return await self._forward(request, found.provider)
        return found.refusal

    async def _forward(self, request: Any, provider: Any) -> tuple[int, bytes]:
        """The same call on the provider's own ``/responses/{id}...``, its answer as is."""
        base = provider.build_request(ApiCall(api="responses", body=b"", parsed={},
                                              model="", stream=False))
        url, _, query = base.url.partition(b"?")
        path = b"/".join([url, self._id.encode(), *request.postpath])
        own_query = request.uri.partition(b"?")[2]
        joined = b"&".join(part for part in (query, own_query) if part)
        call = UpstreamCall(self._gateway.reactor, self._gateway.config.upstream)
        request.notifyFinish().addErrback(lambda _: call.abort())
        try:
            response = await call.send(provider.agent, UpstreamRequest(
                request.method, path + (b"?" + joined if joined else b""), base.headers, b""))
            body = await call.read(response)
        except UpstreamError as error:
            return error.status, error_body(error.status, str(error), error.code)
        if response.code != 200:
            return upstream_error(OPENAI, response.code, body, self._gateway.redactor)
        return response.code, body


def _argument(request: Any, name: bytes) -> str | None:
    values = request.args.get(name)
    return values[0].decode("utf-8", "replace") if values else None


@attrs.frozen
class _Found:
    """What a response id leads to: the response held here, the provider holding it, or neither
    (then the answer to give)."""

    held: dict[str, Any] | None = None
    provider: Any = None
    refusal: tuple[int, bytes] = (404, b"")
