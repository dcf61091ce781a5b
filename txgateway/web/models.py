"""``GET /v1/models`` and ``GET /v1/models/{id}``: the models callers can name, from config."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import orjson
from twisted.web.resource import Resource

from txgateway.gateway import Gateway
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import JSONResource, openai_error, write_json


class Models(JSONResource):
    openapi = Endpoint("OpenAI", {"GET": Operation("List models", None, "List")},
                       item="{model}")
    def __init__(self, gateway: Gateway, created: int) -> None:
        super().__init__()
        self._gateway = gateway
        self._created = created

    def _model(self, name: str, owner: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self._created, "owned_by": owner}

    def render_GET(self, request: Any) -> bytes:
        listed = self._gateway.router.listed()
        data = [self._model(name, target.provider.name) for name, target in listed.items()]
        return write_json(request, 200, orjson.dumps({"object": "list", "data": data}))

    def getChild(self, path: bytes, request: Any) -> Resource:
        return Model(self, unquote(path.decode("utf-8", "replace")))


class Model(JSONResource):
    openapi = Endpoint("OpenAI", {"GET": Operation("Retrieve a model")})
    isLeaf = True

    def __init__(self, models: Models, name: str) -> None:
        super().__init__()
        self._models = models
        self._name = name

    def render_GET(self, request: Any) -> bytes:
        target = self._models._gateway.router.resolve(self._name)
        if target is None:
            return openai_error(
                request, 404, f"The model `{self._name}` does not exist", "model_not_found",
                "model",
            )
        return write_json(request, 200, orjson.dumps(
            self._models._model(self._name, target.provider.name)))
