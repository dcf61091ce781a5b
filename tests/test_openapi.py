"""``/openapi.json`` is the tree: every served route documented, every documented one served."""

from __future__ import annotations

import re
from io import BytesIO
from typing import Any

import orjson
import treq
from twisted.internet import reactor
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, FileBodyProducer
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource

import txgateway.web.root  # noqa: F401 (every endpoint module, imported)
from tests.gateway_harness import CONFIG, GatewayTestCase
from txgateway.web.openapi import SCHEMAS, routes, served_methods

ADMIN = "admin-secret"

#: Resource classes that are bases or plumbing, not endpoints served at a path of their own.
NOT_ENDPOINTS = {"Root", "TracedRoot", "JSONResource", "NotFound",
                 "CallEndpoint",
                 "FormEndpoint", "_AnthropicEndpoint", "_ResponsesInput",
                 "StaticFiles", "_Refusal", "_Traced", "Overloaded", "GatewayResource",
                 "Collection", "Item", "StoredObject"}


def _subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_subclasses(sub)}
    return found


class _Hangup(Protocol):
    """Reads nothing of a body (an endless event stream): drops the connection at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()


class OpenAPITests(GatewayTestCase):
    config = CONFIG + f"admin:\n  token: {ADMIN}\n"

    async def _document(self) -> dict[str, Any]:
        response = await treq.get(self.base_url + "/openapi.json", pool=self.pool)
        self.assertEqual(response.code, 200)
        return orjson.loads(await response.content())

    async def test_every_served_route_is_documented(self) -> None:
        document = await self._document()
        self.assertEqual(document["openapi"], "3.1.0")
        root = self.service.site.resource
        seen: set[type] = set()
        for path, resource in routes(root):
            seen.add(type(resource))
            methods = served_methods(resource)
            declared = getattr(resource, "openapi", None)
            if not methods and declared is None:
                continue  # a plain branch of the tree (/v1)
            self.assertIsNotNone(declared, f"{path} ({type(resource).__name__}) is undeclared")
            if declared.operations:
                self.assertIn(path, document["paths"])
                documented = {method.upper() for method in document["paths"][path]}
                self.assertEqual(documented, set(declared.operations))
                if type(resource).render is Resource.render or methods:
                    self.assertLessEqual(documented, methods, path)
            for below in declared.below:
                self.assertIn(f"{path.rstrip('/')}/{below}", document["paths"])
        # Every endpoint class the gateway has is reached from the root.
        missing = [cls.__name__ for cls in _subclasses(Resource)
                   if cls.__module__.startswith("txgateway.")
                   and cls.__name__ not in NOT_ENDPOINTS and cls not in seen]
        self.assertEqual(missing, [])

    async def test_every_documented_route_answers(self) -> None:
        document = await self._document()
        agent = Agent(reactor, pool=self.pool)
        tags = {tag["name"] for tag in document["tags"]}
        for path, operations in document["paths"].items():
            url = re.sub(r"\{path\}", "v1/models", path)
            url = re.sub(r"\{file\}", "dashboard.js" if path.startswith("/admin") else
                         "redoc.standalone.js", url)
            url = re.sub(r"\{\w+\}", "x", url)
            token = ADMIN if path.startswith("/admin") else "sk-caller"
            for method, operation in operations.items():
                self.assertIn("200", operation["responses"])
                self.assertLessEqual(set(operation["tags"]), tags)
                headers = Headers({b"authorization": [f"Bearer {token}".encode()],
                                   b"content-type": [b"application/json"]})
                body = None
                if method in ("post", "put", "patch"):
                    body = FileBodyProducer(BytesIO(b"{}"))
                response = await agent.request(method.upper().encode(),
                                               (self.base_url + url).encode(), headers, body)
                content_type = response.headers.getRawHeaders(b"content-type", [b""])[0]
                if content_type.startswith(b"text/event-stream"):
                    response.deliverBody(_Hangup())
                    answer = b""
                else:
                    answer = await treq.content(response)
                shown = f"{method.upper()} {url} -> {response.code} {answer[:200]!r}"
                self.assertNotEqual(response.code, 405, shown)
                if response.code == 404:
                    self.assertNotIn(b"unknown_url", answer, shown)

    def test_schema_references_resolve(self) -> None:
        text = orjson.dumps(SCHEMAS).decode()
        for name in re.findall(r"#/components/schemas/(\w+)", text):
            self.assertIn(name, SCHEMAS)
