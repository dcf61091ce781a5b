"""
``GET /openapi.json``: the gateway's own API as an OpenAPI 3.1 document, made from the
resource tree itself so that it cannot drift from what is served.

Each endpoint resource says what it serves in a class attribute ``openapi`` (an `Endpoint`).
The document walks the tree from the root: the fixed children, and for a resource that makes
its children per request (``getChild``) the one it makes for its `Endpoint.item` placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from importlib.metadata import version
from typing import Any

import attrs
import orjson
from twisted.web.resource import Resource

from txgateway.web.resource import JSONResource, NotFound


@attrs.frozen
class Operation:
    """One method on one path: what it does, and the component schemas of its bodies."""

    summary: str
    #: The JSON request body's schema name, or "form" for a multipart upload.
    request: str | None = None
    #: The schema name of a successful answer's JSON, or a media type ("text/plain").
    response: str = "Object"
    #: Query parameters, by name: what each means.
    query: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen
class Endpoint:
    """What a resource serves, by method, for the OpenAPI document."""

    tag: str
    operations: Mapping[str, Operation] = attrs.field(factory=dict)
    #: Sub-paths a leaf resource answers itself: ``{"content": {"GET": Operation(...)}}``.
    below: Mapping[str, Mapping[str, Operation]] = attrs.field(factory=dict)
    #: The path segment naming the child ``getChild`` makes, e.g. "{file_id}".
    item: str | None = None


#: Who may call: a caller's virtual key, or the admin token.
_Security = list[dict[str, list[str]]]
_CALLER: _Security = [{"apiKey": []}, {"anthropicKey": []}]
_ADMIN: _Security = [{"adminToken": []}]
_OPEN: _Security = []


def _object(required: tuple[str, ...] = (), **properties: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


_STRING, _INTEGER, _NUMBER, _BOOLEAN = ({"type": name} for name in
                                        ("string", "integer", "number", "boolean"))
_ANY_OBJECT = {"type": "object"}
_MESSAGES = {"type": "array", "items": _object(("role",), role=_STRING, content={})}
_USAGE = _object(prompt_tokens=_INTEGER, completion_tokens=_INTEGER, total_tokens=_INTEGER)

SCHEMAS: dict[str, Any] = {
    "Object": _ANY_OBJECT,
    "Error": _object(("error",), error=_object(
        ("message", "type"), message=_STRING, type=_STRING, param={}, code={})),
    "ChatCompletionRequest": _object(
        ("model", "messages"), model=_STRING, messages=_MESSAGES, stream=_BOOLEAN,
        stream_options=_ANY_OBJECT, max_tokens=_INTEGER, max_completion_tokens=_INTEGER,
        temperature=_NUMBER, tools={"type": "array"}, response_format=_ANY_OBJECT),
    "ChatCompletion": _object(
        ("id", "object", "model", "choices"), id=_STRING, object={"const": "chat.completion"},
        created=_INTEGER, model=_STRING, choices={"type": "array"}, usage=_USAGE),
    "CompletionRequest": _object(("model", "prompt"), model=_STRING, prompt={},
                                 max_tokens=_INTEGER, stream=_BOOLEAN),
    "EmbeddingRequest": _object(("model", "input"), model=_STRING, input={},
                                encoding_format=_STRING, dimensions=_INTEGER),
    "EmbeddingList": _object(("object", "data"), object={"const": "list"},
                             data={"type": "array"}, model=_STRING, usage=_USAGE),
    "ResponseRequest": _object(("model",), model=_STRING, input={}, instructions=_STRING,
                               previous_response_id=_STRING, conversation={}, stream=_BOOLEAN,
                               store=_BOOLEAN, tools={"type": "array"}),
    "Response": _object(("id", "object"), id=_STRING, object={"const": "response"},
                        model=_STRING, output={"type": "array"}, usage=_ANY_OBJECT),
    "MessageRequest": _object(("model", "messages", "max_tokens"), model=_STRING,
                              messages=_MESSAGES, max_tokens=_INTEGER, system={},
                              stream=_BOOLEAN, tools={"type": "array"}),
    "Message": _object(("id", "type", "content"), id=_STRING, type={"const": "message"},
                       role=_STRING, model=_STRING, content={"type": "array"},
                       usage=_ANY_OBJECT),
    "CountTokensRequest": _object(("model", "messages"), model=_STRING, messages=_MESSAGES),
    "RerankRequest": _object(("model", "query", "documents"), model=_STRING, query=_STRING,
                             documents={"type": "array"}, top_n=_INTEGER),
    "RerankResult": _object(("results",), results={"type": "array"}, meta=_ANY_OBJECT),
    "ImageRequest": _object(("prompt",), model=_STRING, prompt=_STRING, n=_INTEGER,
                            size=_STRING),
    "SpeechRequest": _object(("model", "input", "voice"), model=_STRING, input=_STRING,
                             voice=_STRING, response_format=_STRING),
    "List": _object(("object", "data"), object={"const": "list"}, data={"type": "array"}),
    "KeyFields": _object(
        name=_STRING, models={"type": "array", "items": _STRING},
        requests_per_minute=_INTEGER, tokens_per_minute=_INTEGER, budget_usd=_NUMBER,
        budget_period={"enum": ["day", "month", "total"]},
        metadata={"type": "object", "additionalProperties": _STRING}, expires_at=_NUMBER),
    "Key": _object(("id",), id=_STRING, key=_STRING, name=_STRING,
                   allowed_models={"type": "array", "items": _STRING},
                   requests_per_minute=_INTEGER, tokens_per_minute=_INTEGER,
                   budget_usd=_NUMBER, budget_period=_STRING, revoked_at=_NUMBER),
}

#: The order the docs page shows the tags in.
_TAG_ORDER = ("OpenAI", "Anthropic", "Cohere", "Realtime", "Passthrough", "Admin", "Dashboard",
              "Operations", "Gateway")

_SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "description": "A virtual key."},
    "anthropicKey": {"type": "apiKey", "in": "header", "name": "x-api-key",
                     "description": "A virtual key, as Anthropic's SDK sends it."},
    "adminToken": {"type": "http", "scheme": "bearer",
                   "description": "The config's admin.token."},
}


def routes(root: Resource) -> Iterator[tuple[str, Resource]]:
    """Every resource of the tree with its path ("/v1/chat/completions"), root first."""
    stack: list[tuple[str, Resource]] = [("", root)]
    while stack:
        path, resource = stack.pop()
        yield path or "/", resource
        children = dict(getattr(resource, "children", {}))
        declared = getattr(resource, "openapi", None)
        if declared is not None and declared.item is not None:
            child = resource.getChild(declared.item.encode(), None)
            if not isinstance(child, NotFound):
                children[declared.item.encode()] = child
        for name, child in sorted(children.items(), reverse=True):
            stack.append((f"{path}/{name.decode()}", child))


def served_methods(resource: Resource) -> set[str]:
    """The methods a resource renders (its ``render_*``), HEAD aside."""
    return {name[7:] for name in dir(type(resource))
            if name.startswith("render_") and name != "render_HEAD"}


def document(root: Resource) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path, resource in routes(root):
        declared = getattr(resource, "openapi", None)
        if declared is None:
            continue
        for below, operations in [("", declared.operations), *declared.below.items()]:
            if not operations:
                continue
            full = f"{path.rstrip('/')}/{below}".rstrip("/") if below else path
            paths[full] = {method.lower(): _operation(full, method, operation, declared.tag)
                           for method, operation in operations.items()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "txgateway", "version": version("txgateway"),
                 "description": "The gateway's own endpoints: the OpenAI, Anthropic and "
                                "Cohere APIs it serves, its admin API, health and metrics."},
        "tags": [{"name": tag} for tag in _TAG_ORDER],
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": SCHEMAS, "securitySchemes": _SECURITY_SCHEMES},
    }


def _operation(path: str, method: str, operation: Operation, tag: str) -> dict[str, Any]:
    first = path.split("/")[1]
    security = (_OPEN if first in ("health", "metrics", "openapi.json", "docs")
                or path.startswith("/admin/ui") else _ADMIN if first == "admin" else _CALLER)
    answer: dict[str, Any] = {"description": "Success."}
    if operation.response in SCHEMAS:
        answer["content"] = {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{operation.response}"}}}
    else:
        answer["content"] = {operation.response: {"schema": _STRING}}
    shown: dict[str, Any] = {
        "operationId": method.lower() + re.sub(r"[^A-Za-z0-9]+", "_", path).rstrip("_"),
        "summary": operation.summary,
        "tags": [tag],
        "security": security,
        "responses": {"200": answer, "default": {
            "description": "An error, in the dialect of the API called.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }},
    }
    parameters = [{"name": name, "in": "path", "required": True, "schema": _STRING}
                  for name in re.findall(r"\{(\w+)\}", path)]
    parameters += [{"name": name, "in": "query", "description": meaning, "schema": _STRING}
                   for name, meaning in operation.query.items()]
    if parameters:
        shown["parameters"] = parameters
    if operation.request == "form":
        shown["requestBody"] = {"required": True, "content": {
            "multipart/form-data": {"schema": _ANY_OBJECT}}}
    elif operation.request is not None:
        shown["requestBody"] = {"required": True, "content": {"application/json": {
            "schema": {"$ref": f"#/components/schemas/{operation.request}"}}}}
    return shown


class OpenAPIDocument(JSONResource):
    """``GET /openapi.json``, made once from the tree (which does not change while serving)."""

    isLeaf = True
    openapi = Endpoint("Gateway", {"GET": Operation("This document", None, "Object")})

    def __init__(self, root: Resource) -> None:
        super().__init__()
        self._root = root
        self._body: bytes | None = None

    def render_GET(self, request: Any) -> bytes:
        if self._body is None:
            self._body = orjson.dumps(document(self._root))
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"access-control-allow-origin", b"*")
        return self._body
