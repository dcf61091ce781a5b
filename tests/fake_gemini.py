"""
A fake Google server on a loopback port: the Gemini API (``/v1beta/models/{m}:method`` with
``x-goog-api-key``), Vertex AI (``/v1/projects/.../publishers/{google|anthropic}/models/
{m}:method`` with a bearer token; text embedding models' ``:predict`` too), Discovery
Engine's ranking API (``/v1/projects/{p}/locations/global/rankingConfigs/
default_ranking_config:rank``, bearer token, scores from `tests.fake_cohere.scores`) and an
OAuth token endpoint (``/token``) that checks the JWT assertion's RS256 signature against the
test service account's public key.

Gemini answers are chosen by the model name, as in `tests.fake_openai`: ``error-NNN``,
``blocked``, ``stream-error``, ``slow-stream``; tools get a function call, a thinking config
gets a thought.  Vertex's Claude models are answered by `tests.fake_anthropic`.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any
from urllib.parse import parse_qs

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from twisted.internet import reactor
from twisted.web.server import NOT_DONE_YET

from tests.fake_anthropic import FakeAnthropic
from tests.fake_cohere import scores
from tests.fake_openai import Dripper, FakeUpstream
from txgateway.web.site import GatewaySite

API_KEY = "AIza-fake-key"
TEXT = ["Hel", "lo", " there", "!"]
THOUGHT = "Thinking it over."
USAGE = {"promptTokenCount": 30, "candidatesTokenCount": 9, "cachedContentTokenCount": 12,
         "totalTokenCount": 39}
THOUGHTS_TOKENS = 5
STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                503: "UNAVAILABLE"}
GEMINI_PATH = re.compile(rb"^/v1beta/models/([^/:]+):(\w+)$")
VERTEX_PATH = re.compile(
    rb"^/v1/projects/([^/]+)/locations/([^/]+)/publishers/(google|anthropic)/models/"
    rb"([^/:]+):(\w+)$")
RANK_PATH = re.compile(
    rb"^/v1/projects/([^/]+)/locations/global/rankingConfigs/default_ranking_config:rank$")
#: The longest input a text embedding model takes (in words here) with autoTruncate off.
EMBED_MAX_WORDS = 50


def google_error(request: Any, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=UTF-8")
    return orjson.dumps({"error": {"code": status, "message": message,
                                   "status": STATUS_NAMES.get(status, "UNKNOWN")}})


def _unb64(part: bytes) -> bytes:
    return base64.urlsafe_b64decode(part + b"=" * (-len(part) % 4))


class FakeGoogle(FakeUpstream):
    def __init__(self, public_key: Any = None, token_uri: str = "") -> None:
        super().__init__()
        self.anthropic = FakeAnthropic()
        self.public_key = public_key
        self.token_uri = token_uri
        #: Tokens issued, the JWT claims of each mint, and what the token endpoint does.
        self.issued: set[str] = set()
        self.mints: list[dict[str, Any]] = []
        self.token_lifetime = 3600
        self.refuse_tokens = False
        #: While not None, token requests wait here until `release_tokens`.
        self.held_tokens: list[Any] | None = None

    def received(self, request: Any) -> dict[str, Any]:
        body = orjson.loads(request.content.read())
        self.requests.append((request.path, dict(request.requestHeaders.getAllRawHeaders()),
                              body))
        self.queries.append(request.args)
        model = (GEMINI_PATH.match(request.path) or VERTEX_PATH.match(request.path))
        name = model.group(1 if model.re is GEMINI_PATH else 4).decode() if model else ""
        request.notifyFinish().addErrback(lambda _: self._dropped(name))
        return body

    def render_POST(self, request: Any) -> Any:
        if request.path == b"/token":
            return self._token(request)
        body = self.received(request)
        gemini = GEMINI_PATH.match(request.path)
        if gemini is not None:
            if request.getHeader(b"x-goog-api-key") != API_KEY.encode():
                return google_error(request, 400, "API key not valid. Please pass a valid "
                                                  "API key.")
            return self._gemini(request, gemini.group(1).decode(), gemini.group(2), body)
        vertex = VERTEX_PATH.match(request.path)
        rank = RANK_PATH.match(request.path)
        if vertex is None and rank is None:
            return google_error(request, 404, "no such method")
        bearer = (request.getHeader(b"authorization") or b"").removeprefix(b"Bearer ")
        if bearer.decode() not in self.issued:
            return google_error(request, 401, "Request had invalid authentication "
                                              "credentials.")
        if vertex is None:
            return self._rank(request, body)
        publisher, model, method = (vertex.group(3), vertex.group(4).decode(), vertex.group(5))
        if method == b"predict":
            return self._predict(request, model, body)
        if publisher == b"anthropic":
            # Fake Anthropic answers by the body's model, which Vertex takes from the path.
            request.content = io.BytesIO(orjson.dumps({**body, "model": model}))
            return self.anthropic.render_POST(request)
        return self._gemini(request, model, method, body)

    # --- Vertex AI's text embeddings and ranking ------------------------------------------

    @staticmethod
    def _predict(request: Any, model: str, body: dict[str, Any]) -> bytes:
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            return google_error(request, status, f"fake embeddings error {status}")
        instances, parameters = body["instances"], body.get("parameters") or {}
        if not all(isinstance(item.get("content"), str) for item in instances):
            return google_error(request, 400, "Invalid instance: content must be a string")
        texts = [item["content"] for item in instances]
        if not parameters.get("autoTruncate", True) and any(
                len(text.split()) > EMBED_MAX_WORDS for text in texts):
            return google_error(request, 400, "Unable to submit request because the input "
                                              "token count is too large.")
        size = parameters.get("outputDimensionality") or 4
        request.setHeader(b"content-type", b"application/json; charset=UTF-8")
        return orjson.dumps({
            "predictions": [{"embeddings": {
                "statistics": {"truncated": False, "token_count": len(text.split())},
                "values": [len(text) + index / 8 for index in range(size)]}}
                for text in texts],
            "metadata": {"billableCharacterCount": sum(len(text) for text in texts)}})

    @staticmethod
    def _rank(request: Any, body: dict[str, Any]) -> bytes:
        model = body.get("model", "")
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            if status == 429:
                request.setHeader(b"retry-after", b"7")
            return google_error(request, status, f"fake ranking error {status}")
        records = body.get("records") or []
        if not model.startswith("semantic-ranker-") or not records or not all(
                isinstance(record.get("id"), str) and record.get("content")
                for record in records):
            return google_error(request, 400, "Request contains an invalid argument.")
        ranked = scores(body.get("query", ""), [record["content"] for record in records])
        answer = []
        for index, score in ranked[:body.get("topN") or len(records)]:
            # As Google's: rounded to 2 places, and never 0 (0.0001 instead).
            record = {"id": records[index]["id"], "score": max(round(score, 2), 0.0001)}
            if not body.get("ignoreRecordDetailsInResponse"):
                record["content"] = records[index]["content"]
            answer.append(record)
        request.setHeader(b"content-type", b"application/json; charset=UTF-8")
        return orjson.dumps({"records": answer})

    # --- OAuth ---------------------------------------------------------------------------

    def _token(self, request: Any) -> Any:
        form = parse_qs(request.content.read().decode())
        if self.held_tokens is not None:
            self.held_tokens.append((request, form))
            return NOT_DONE_YET
        return self._mint(request, form)

    def release_tokens(self) -> None:
        held, self.held_tokens = self.held_tokens or [], None
        for request, form in held:
            request.write(self._mint(request, form))
            request.finish()

    def _mint(self, request: Any, form: dict[str, list[str]]) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        claims = self._verified(form)
        if claims is None or self.refuse_tokens:
            request.setResponseCode(400)
            return orjson.dumps({"error": "invalid_grant",
                                 "error_description": "Invalid JWT Signature."})
        self.mints.append(claims)
        token = f"ya29.fake-{len(self.mints)}"
        self.issued.add(token)
        return orjson.dumps({"access_token": token, "expires_in": self.token_lifetime,
                             "token_type": "Bearer"})

    def _verified(self, form: dict[str, list[str]]) -> dict[str, Any] | None:
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return None
        try:
            header, claims, signature = form["assertion"][0].encode().split(b".")
            self.public_key.verify(_unb64(signature), header + b"." + claims,
                                   padding.PKCS1v15(), hashes.SHA256())
        except Exception:
            return None
        decoded = orjson.loads(_unb64(claims))
        if (orjson.loads(_unb64(header)).get("alg") != "RS256"
                or decoded.get("aud") != self.token_uri
                or decoded.get("scope") != "https://www.googleapis.com/auth/cloud-platform"
                or not decoded["iat"] < decoded["exp"] <= decoded["iat"] + 3600):
            return None
        return decoded

    # --- Gemini ----------------------------------------------------------------------------

    def _gemini(self, request: Any, model: str, method: bytes, body: dict[str, Any]) -> Any:
        behaviour = model.removeprefix("gemini-")
        if behaviour.startswith("error-"):
            status = int(behaviour.split("-")[1])
            if status == 429:
                request.setHeader(b"retry-after", b"7")
            return google_error(request, status, f"fake gemini error {status}")
        request.setHeader(b"content-type", b"application/json; charset=UTF-8")
        if method == b"embedContent":
            return orjson.dumps({"embedding": {"values": self._vector(body)}})
        if method == b"batchEmbedContents":
            return orjson.dumps({"embeddings": [{"values": self._vector(item)}
                                                for item in body["requests"]]})
        if method == b"streamGenerateContent":
            return self._stream(request, model, behaviour, body)
        if behaviour == "blocked":
            return orjson.dumps({"promptFeedback": {"blockReason": "SAFETY"},
                                 "usageMetadata": {"promptTokenCount": 30,
                                                   "totalTokenCount": 30},
                                 "modelVersion": model})
        answer = self._envelope(model, body, self._parts(body, TEXT), "STOP")
        answer["usageMetadata"] = self._usage(body)
        return orjson.dumps(answer)

    @staticmethod
    def _vector(item: dict[str, Any]) -> list[float]:
        size = item.get("outputDimensionality") or 4
        text = item["content"]["parts"][0]["text"]
        return [len(text) + index / 8 for index in range(size)]

    @staticmethod
    def _thinking(body: dict[str, Any]) -> bool:
        config = (body.get("generationConfig") or {}).get("thinkingConfig") or {}
        return bool(config.get("includeThoughts"))

    def _usage(self, body: dict[str, Any]) -> dict[str, Any]:
        if not self._thinking(body):
            return dict(USAGE)
        return {**USAGE, "thoughtsTokenCount": THOUGHTS_TOKENS,
                "totalTokenCount": USAGE["totalTokenCount"] + THOUGHTS_TOKENS}

    def _parts(self, body: dict[str, Any], text: list[str]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if self._thinking(body):
            parts.append({"text": THOUGHT, "thought": True})
        if text:
            parts.append({"text": "".join(text)})
        for tools in body.get("tools") or []:
            for declaration in tools.get("functionDeclarations") or []:
                parts.append({"functionCall": {"name": declaration["name"],
                                               "args": {"city": "Paris"}},
                              "thoughtSignature": "c2lnbmF0dXJl"})
        return parts

    @staticmethod
    def _envelope(model: str, body: dict[str, Any], parts: list[dict[str, Any]],
                  finish: str | None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return {"candidates": [candidate], "modelVersion": model, "responseId": "resp-fake"}

    def _stream(self, request: Any, model: str, behaviour: str, body: dict[str, Any]) -> Any:
        request.setHeader(b"content-type", b"text/event-stream")
        usage = self._usage(body)

        def event(answer: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps(answer) + b"\r\n\r\n"

        events = []
        if self._thinking(body):
            events.append(event(self._envelope(model, body, [
                {"text": THOUGHT, "thought": True}], None)))
        for text in TEXT[:-1]:
            events.append(event({**self._envelope(model, body, [{"text": text}], None),
                                 "usageMetadata": {**usage, "candidatesTokenCount": 1}}))
        last = self._parts({"tools": body.get("tools")}, TEXT[-1:])
        events.append(event({**self._envelope(model, body, last, "STOP"),
                             "usageMetadata": usage}))
        if behaviour == "stream-error":
            events = events[:2] + [event({"error": {
                "code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})]
        if behaviour == "slow-stream":
            Dripper(request, events[0]).start()
            return NOT_DONE_YET
        for data in events:
            request.write(data)
        request.finish()
        return NOT_DONE_YET


async def start_fake_google(public_key: Any = None) -> tuple[FakeGoogle, Any, GatewaySite]:
    """The fake, its port and its site; the token endpoint is ``http://127.0.0.1:{port}/token``."""
    fake = FakeGoogle(public_key)
    site = GatewaySite(fake)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    fake.token_uri = f"http://127.0.0.1:{port.getHost().port}/token"
    return fake, port, site
