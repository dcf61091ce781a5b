"""
A fake Cohere server on a loopback port: rerank v2 (``/v2/rerank``) and the OpenAI-compatible
chat (``/compatibility/v1/chat/completions``), in Cohere's wire format.  It also serves a
vLLM-style rerank at ``/v1/rerank`` (usage as ``usage.total_tokens``, OpenAI-shaped errors),
so one server plays both kinds of rerank upstream.

As in `tests.fake_openai`, the request's model chooses the behaviour: ``error-<status>`` answers
that error in the path's own shape, ``html-502`` a proxy's HTML page.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet import reactor

from tests.fake_openai import FakeOpenAI
from tests.gateway_harness import GatewayTestCase
from txgateway.web.site import GatewaySite

#: Search units Cohere bills for a query of up to 100 documents.
SEARCH_UNITS = 1


def scores(query: str, documents: list[str]) -> list[tuple[int, float]]:
    """(index, relevance) by relevance: the share of the query's words each document holds."""
    words = query.lower().split()
    ranked = [(index, sum(word in document.lower() for word in words) / len(words))
              for index, document in enumerate(documents)]
    return sorted(ranked, key=lambda pair: (-pair[1], pair[0]))


class FakeCohere(FakeOpenAI):
    def render_POST(self, request: Any) -> Any:
        if request.path in (b"/v2/rerank", b"/v1/rerank"):
            return self._rerank(request, self.received(request))
        if request.path == b"/compatibility/v1/chat/completions":
            body = orjson.loads(request.content.getvalue())
            if "stream_options" in body:
                self.received(request)
                request.setResponseCode(400)
                request.setHeader(b"content-type", b"application/json")
                return orjson.dumps({"id": "fake-id", "message":
                                     "invalid request: stream_options is not supported"})
            return super().render_POST(request)
        request.setResponseCode(404)
        return orjson.dumps({"message": f"no route for {request.path.decode()}"})

    def _rerank(self, request: Any, body: dict[str, Any]) -> bytes:
        vllm = request.path == b"/v1/rerank"
        model = body["model"]
        request.setHeader(b"content-type", b"application/json")
        if model == "html-502":
            request.setResponseCode(502)
            request.setHeader(b"content-type", b"text/html")
            return b"<html><body>Bad gateway</body></html>"
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            request.setResponseCode(status)
            if status == 429:
                request.setHeader(b"retry-after", b"7")
            message = f"fake rerank error {status}"
            if vllm:
                return orjson.dumps({"error": {"message": message, "type": "BadRequestError",
                                               "param": None, "code": status}})
            return orjson.dumps({"id": "fake-error-id", "message": message})
        documents = body["documents"]
        if not all(isinstance(document, str) for document in documents):
            # Cohere's v2 takes strings only.
            request.setResponseCode(400)
            return orjson.dumps({"id": "fake-error-id", "message":
                                 "invalid request: documents must be strings"})
        ranked = scores(body["query"], documents)[:body.get("top_n") or len(documents)]
        results = []
        for index, score in ranked:
            result: dict[str, Any] = {"index": index, "relevance_score": score}
            if vllm or body.get("return_documents"):
                result["document"] = {"text": documents[index]}
            results.append(result)
        if vllm:
            tokens = sum(len(document.split()) for document in documents)
            return orjson.dumps({"id": "rerank-fake", "model": model,
                                 "usage": {"total_tokens": tokens}, "results": results})
        return orjson.dumps({"id": "fake-rerank-id", "results": results, "meta": {
            "api_version": {"version": "2"},
            "billed_units": {"search_units": SEARCH_UNITS}}})


async def start_fake_cohere() -> tuple[FakeCohere, Any, GatewaySite]:
    """The fake, its port and its site (whose ``close_connections`` tests call at the end)."""
    fake = FakeCohere()
    site = GatewaySite(fake)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return fake, port, site


class CohereTestCase(GatewayTestCase):
    """
    A gateway test with a fake Cohere beside the harness's fakes: ``config`` may name its port
    as ``{cohere_port}``.
    """

    async def _start(self) -> None:
        self.cohere, self.cohere_port, self.cohere_site = await start_fake_cohere()
        self.addCleanup(self._stop_cohere)
        self.config = type(self).config.replace(
            "{cohere_port}", str(self.cohere_port.getHost().port))
        await super()._start()

    async def _stop_cohere(self) -> None:
        await self.cohere_port.stopListening()
        await self.cohere_site.close_connections()
