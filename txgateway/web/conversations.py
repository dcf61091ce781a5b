"""
``/v1/conversations``: OpenAI's Conversations API, held by the gateway for every provider.

A conversation is a list of items (messages, function calls and their outputs...) that a
Responses call naming it reads as its history and appends its turn to
(`txgateway.web.responses`).  The gateway keeps it in its store, owned by the caller's key:
the conversation under the kind ``conversation``, and each item as a document of its own
under a kind of the conversation's own (``conversation_item:<id>``), so that a page of items
is one indexed range query however long the conversation grows.  Items are ordered by the
time they were added (their ``created_at`` column; items added together a microsecond apart).
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from twisted.internet.defer import Deferred, gatherResults

from txgateway.admission import Refusal, key_refused
from txgateway.auth import caller_key
from txgateway.dialects.openai import BadRequest, error_body, parse_object
from txgateway.gateway import Gateway
from txgateway.translate.responses_to_chat import new_id, stored_items
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import Collection, Item, answer_later, openai_error

CONVERSATION = "conversation"
#: OpenAI's limits: items one call may add, metadata pairs and their sizes.
MAX_NEW_ITEMS, MAX_METADATA, MAX_KEY, MAX_VALUE = 20, 16, 64, 512
#: What separates the ``created_at`` of items added together, keeping their order.
_STEP = 1e-6
#: Items read per query when a whole conversation is loaded.
_PAGE = 1000
_ROLES = ("user", "assistant", "system", "developer")


def items_kind(conversation_id: str) -> str:
    return f"conversation_item:{conversation_id}"


def not_found(conversation_id: str) -> Refusal:
    return Refusal(404, f"Conversation with id '{conversation_id}' not found.", None,
                   "conversation")


async def find(store: Any, conversation_id: str, owner: str | None) -> dict[str, Any] | None:
    """The stored conversation (``{"conversation": ..., "owner": ...}``), if ``owner``'s."""
    held = await store.get_object(CONVERSATION, conversation_id)
    return held if held is not None and held["owner"] == owner else None


async def history(store: Any, conversation_id: str) -> list[dict[str, Any]]:
    """Every item of the conversation, oldest first."""
    items: list[dict[str, Any]] = []
    after = None
    while True:
        page = await store.list_objects(items_kind(conversation_id), None, after, _PAGE, "asc")
        items += page
        if len(page) < _PAGE:
            return items
        after = page[-1]["id"]


def append(store: Any, conversation_id: str, owner: str | None, items: list[dict[str, Any]],
           now: float) -> Deferred[Any]:
    """Add ``items`` (each with its id) after the conversation's last."""
    kind = items_kind(conversation_id)
    return gatherResults([store.put_object(kind, item["id"], owner, item, now + index * _STEP)
                          for index, item in enumerate(items)], consumeErrors=True)


def check_metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("'metadata' must be an object of string values", "metadata")
    if len(value) > MAX_METADATA:
        raise BadRequest(f"'metadata' may hold at most {MAX_METADATA} pairs, not "
                         f"{len(value)}", "metadata")
    for key, text in value.items():
        if len(key) > MAX_KEY:
            raise BadRequest(f"metadata keys may be at most {MAX_KEY} characters long",
                             "metadata")
        if not isinstance(text, str) or len(text) > MAX_VALUE:
            raise BadRequest(f"metadata values must be strings of at most {MAX_VALUE} "
                             "characters", "metadata")
    return value


def check_items(value: Any) -> list[dict[str, Any]]:
    """The items a call adds, each typed and with an id; `BadRequest` when malformed."""
    if not isinstance(value, list):
        raise BadRequest("'items' must be an array of items", "items")
    if len(value) > MAX_NEW_ITEMS:
        raise BadRequest(f"you may add up to {MAX_NEW_ITEMS} items at a time, not "
                         f"{len(value)}", "items")
    for item in value:
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if not isinstance(kind, str):
            raise BadRequest("each item must be an object with a string 'type'", "items")
        if kind == "message" and (item.get("role") not in _ROLES
                                  or not isinstance(item.get("content"), (str, list))):
            raise BadRequest("a message item needs a 'role' (user, assistant, system or "
                             "developer) and a 'content'", "items")
    return stored_items(value)


class Conversation(Item):
    openapi = Endpoint("OpenAI", {
        "GET": Operation("Retrieve a conversation"),
        "POST": Operation("Update a conversation's metadata", "Object"),
        "DELETE": Operation("Delete a conversation")}, below={
        "items": {"GET": Operation("List a conversation's items", None, "List"),
                  "POST": Operation("Add items to a conversation", "Object", "List")},
        "items/{item_id}": {"GET": Operation("Retrieve an item"),
                            "DELETE": Operation("Delete an item")}})
    """
    ``/v1/conversations/{id}`` (GET, POST to update its metadata, DELETE), its ``items``
    (GET a page, POST to add) and ``items/{item_id}`` (GET, DELETE), to its owner only.
    """

    def _route(self, request: Any, **handlers: Any) -> Any:
        path = [part.decode("utf-8", "replace") for part in request.postpath]
        if path in ([], [""]):
            handler = handlers.get("conversation")
        elif path == ["items"]:
            handler = handlers.get("items")
        elif len(path) == 2 and path[0] == "items" and path[1]:
            handler = handlers.get("item")
            if handler is not None:
                return _answer(request, handler(request, path[1]))
        else:
            return openai_error(request, 404, "Invalid URL", "unknown_url")
        if handler is None:
            return openai_error(request, 405, f"{request.method.decode()} is not allowed on "
                                f"{request.path.decode('utf-8', 'replace')}",
                                "method_not_allowed")
        return _answer(request, handler(request))

    def render_GET(self, request: Any) -> Any:
        return self._route(request, conversation=self._retrieve, items=self._list,
                           item=self._item)

    def render_POST(self, request: Any) -> Any:
        return self._route(request, conversation=self._update, items=self._add)

    def render_DELETE(self, request: Any) -> Any:
        return self._route(request, conversation=self._delete, item=self._delete_item)

    async def _held(self, request: Any) -> tuple[dict[str, Any], str | None]:
        owner = await _owner(self._gateway, request)
        held = await find(self._gateway.store, self._id, owner)
        if held is None:
            raise not_found(self._id)
        return held, owner

    async def _retrieve(self, request: Any) -> tuple[int, Any]:
        held, _ = await self._held(request)
        return 200, held["conversation"]

    async def _update(self, request: Any) -> tuple[int, Any]:
        held, owner = await self._held(request)
        body = parse_object(request.content.getvalue())
        if "metadata" not in body:
            raise BadRequest("'metadata' is a required property", "metadata")
        conversation = {**held["conversation"], "metadata": check_metadata(body["metadata"])}
        await self._gateway.store.put_object(CONVERSATION, self._id, owner,
                                             {**held, "conversation": conversation},
                                             conversation["created_at"])
        return 200, conversation

    async def _delete(self, request: Any) -> tuple[int, Any]:
        await self._held(request)
        store = self._gateway.store
        await store.delete_object(CONVERSATION, self._id)
        kind = items_kind(self._id)
        while page := await store.list_objects(kind, None, None, _PAGE, "asc"):
            await gatherResults([store.delete_object(kind, item["id"]) for item in page],
                                consumeErrors=True)
        return 200, {"id": self._id, "object": "conversation.deleted", "deleted": True}

    async def _list(self, request: Any) -> tuple[int, Any]:
        await self._held(request)
        order = _argument(request, "order") or "desc"
        if order not in ("asc", "desc"):
            raise BadRequest("'order' must be 'asc' or 'desc'", "order")
        try:
            limit = int(_argument(request, "limit") or 20)
        except ValueError:
            raise BadRequest("'limit' must be an integer", "limit") from None
        if not 1 <= limit <= 100:
            raise BadRequest("'limit' must be between 1 and 100", "limit")
        found = await self._gateway.store.list_objects(
            items_kind(self._id), None, _argument(request, "after"), limit + 1, order)
        page = found[:limit]
        return 200, {"object": "list", "data": page,
                     "first_id": page[0]["id"] if page else None,
                     "last_id": page[-1]["id"] if page else None,
                     "has_more": len(found) > limit}

    async def _add(self, request: Any) -> tuple[int, Any]:
        _, owner = await self._held(request)
        body = parse_object(request.content.getvalue())
        if "items" not in body:
            raise BadRequest("'items' is a required property", "items")
        items = check_items(body["items"])
        await append(self._gateway.store, self._id, owner, items,
                     self._gateway.reactor.seconds())
        return 200, {"object": "list", "data": items,
                     "first_id": items[0]["id"] if items else None,
                     "last_id": items[-1]["id"] if items else None, "has_more": False}

    async def _item(self, request: Any, item_id: str) -> tuple[int, Any]:
        await self._held(request)
        item = await self._gateway.store.get_object(items_kind(self._id), item_id)
        if item is None:
            raise Refusal(404, f"Item with id '{item_id}' not found.", None, "item_id")
        return 200, item

    async def _delete_item(self, request: Any, item_id: str) -> tuple[int, Any]:
        held, _ = await self._held(request)
        if not await self._gateway.store.delete_object(items_kind(self._id), item_id):
            raise Refusal(404, f"Item with id '{item_id}' not found.", None, "item_id")
        return 200, held["conversation"]


class Conversations(Collection):
    openapi = Endpoint("OpenAI", {"POST": Operation("Create a conversation", "Object")},
                       item="{conversation_id}")
    """``POST /v1/conversations``; each conversation below it."""

    item = Conversation

    def render_POST(self, request: Any) -> Any:
        return _answer(request, self._create(request))

    async def _create(self, request: Any) -> tuple[int, Any]:
        owner = await _owner(self._gateway, request)
        raw = request.content.getvalue()
        body = parse_object(raw) if raw.strip() else {}
        metadata = check_metadata(body.get("metadata"))
        items = check_items(body.get("items") or [])
        now = self._gateway.reactor.seconds()
        conversation_id = new_id("conv")
        conversation = {"id": conversation_id, "object": "conversation",
                        "created_at": int(now), "metadata": metadata}
        store = self._gateway.store
        await store.put_object(CONVERSATION, conversation_id, owner,
                               {"conversation": conversation, "owner": owner}, now)
        await append(store, conversation_id, owner, items, now)
        return 200, conversation


async def _owner(gateway: Gateway, request: Any) -> str | None:
    """The caller's key id; a 401 `Refusal` for a bad key."""
    key = caller_key(request)
    principal = await gateway.authenticator.authenticate(key)
    if principal is None:
        raise Refusal(401, key_refused(key is not None), "invalid_api_key")
    return principal.key_id


def _answer(request: Any, work: Coroutine[Any, Any, tuple[int, Any]]) -> Any:
    """`answer_later`, with a `BadRequest` answered 400 and a `Refusal` with its status."""

    async def guarded() -> tuple[int, Any]:
        try:
            return await work
        except BadRequest as error:
            return 400, error_body(400, str(error), None, error.param)
        except Refusal as refusal:
            return refusal.status, error_body(refusal.status, str(refusal), refusal.code,
                                              refusal.param)

    return answer_later(request, guarded())


def _argument(request: Any, name: str) -> str | None:
    values = request.args.get(name.encode())
    return values[0].decode("utf-8", "replace") if values else None
