"""
The ``vertex`` provider: Google Cloud's Vertex AI, for Gemini models and Anthropic's Claude.

Gemini models speak the Gemini wire format (`txgateway.plugins.gemini.wire`) under
``publishers/google``; Claude models (``claude-*``) speak Anthropic's Messages under
``publishers/anthropic`` (``rawPredict``), with the version in the body instead of the model.
Messages callers reach Claude models on that native path (`dialect_of`).  Embeddings go to
the text embedding models' ``:predict``; rerank to the ranking API of Discovery Engine (Vertex
AI Search), ``rankingConfigs/default_ranking_config:rank``.

Requests carry an OAuth bearer token: a static ``access_token``, or one minted from the
service account in ``credentials_file`` (`txgateway.plugins.vertex.google_auth`), which the
endpoints wait for before `build_request` (`prepare`).
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers
from zope.interface import implementer

from txgateway.config import ConfigError, HttpURL
from txgateway.plugins.gemini import wire as gemini
from txgateway.plugins.gemini.live import GeminiLive
from txgateway.plugins.vertex.google_auth import ServiceAccountTokens, TokenError
from txgateway.providers import (
    ApiCall,
    IModelDialects,
    IPreparingProvider,
    IRealtimeProvider,
    ProviderContext,
    ProviderPlugin,
    RealtimeTarget,
    UpstreamRequest,
    json_request_headers,
)
from txgateway.providers.openai_realtime import websocket_url
from txgateway.realtime.translated import IRealtimeTranslator
from txgateway.translate import chat_to_messages, rerank
from txgateway.usage import Usage

#: The Messages wire version Vertex AI takes, in the body.
ANTHROPIC_VERSION = "vertex-2023-10-16"


@attrs.frozen
class VertexSettings:
    project: str
    #: A region such as ``us-central1``, or ``global``.
    location: str = "us-central1"
    #: A service account's JSON key; tokens are minted from it and refreshed.
    credentials_file: str = ""
    #: A static OAuth token, when there is no ``credentials_file``.
    access_token: str = ""
    #: Overrides the host derived from ``location`` (for tests and private endpoints).
    base_url: HttpURL = HttpURL("")
    #: The ranking API's host (rerank), for tests and private endpoints.
    discovery_engine_url: HttpURL = HttpURL("https://discoveryengine.googleapis.com")
    #: ``max_tokens`` for OpenAI calls to Claude models that set none: Anthropic requires it.
    default_max_tokens: int = 4096
    #: Extra headers sent with every request.
    headers: dict[str, str] = attrs.field(factory=dict)


def is_claude(model: str) -> bool:
    return model.startswith("claude-")


@implementer(IModelDialects, IPreparingProvider, IRealtimeProvider, IRealtimeTranslator)
class VertexProvider:
    kind = "vertex"
    #: Gemini's, but Claude models answer in Anthropic's: see `dialect_of`.
    dialect = "gemini"
    stream_content_type = b"text/event-stream"
    apis = frozenset(("chat", "messages", "embeddings", "rerank"))

    def __init__(self, name: str, settings: VertexSettings, context: ProviderContext) -> None:
        self.name = name
        self.agent = context.http_agent
        self._clock = context.reactor
        self._default_max_tokens = settings.default_max_tokens
        location = settings.location
        host = settings.base_url or (
            "https://aiplatform.googleapis.com" if location == "global"
            else f"https://{location}-aiplatform.googleapis.com")
        self._models = (f"{host}/v1/projects/{settings.project}/locations/{location}"
                        f"/publishers/")
        self._live_url = (websocket_url(host)
                          + "/ws/google.cloud.aiplatform.v1.LlmBidiService/BidiGenerateContent")
        self._resources = f"projects/{settings.project}/locations/{location}/publishers/google/"
        self._rank_url = (f"{settings.discovery_engine_url}/v1/projects/{settings.project}"
                          "/locations/global/rankingConfigs/default_ranking_config:rank").encode()
        self._extra = settings.headers
        self._tokens: ServiceAccountTokens | None = None
        if settings.credentials_file:
            try:
                with open(settings.credentials_file, "rb") as key_file:
                    account = orjson.loads(key_file.read())
                self._tokens = ServiceAccountTokens(context.reactor, context.http_agent,
                                                    account)
            except (OSError, ValueError) as error:
                raise ConfigError([f"providers.{name}.credentials_file: {error}"]) from None
        self._headers_token: str | None = None
        self._headers = self._with_token(settings.access_token)

    def dialect_of(self, model: str) -> str:
        """The wire format a model answers in."""
        return "anthropic" if is_claude(model) else "gemini"

    def prepare(self) -> Deferred[str] | None:
        """A Deferred to wait for before `build_request` while a token is being minted."""
        if self._tokens is None or self._tokens.current is not None:
            return None
        return self._tokens.token()

    def realtime_target(self, model: str | None, intent: str,
                        beta: bool) -> RealtimeTarget | None:
        """Gemini Live on Vertex AI, for GA realtime conversations with a Gemini model."""
        if model is None or is_claude(model) or intent != "realtime" or beta:
            return None
        token = self._headers_token if self._tokens is None else self._tokens.current
        return RealtimeTarget(self._live_url, {
            "authorization": f"Bearer {token}" if token else "", **self._extra})

    def realtime_translation(self, model: str, intent: str) -> GeminiLive | None:
        if intent != "realtime" or is_claude(model):
            return None
        return GeminiLive(model, self._resources + "models/" + model)

    def _with_token(self, token: str) -> Headers:
        if token != self._headers_token:
            self._headers_token = token
            self._headers = json_request_headers(
                {"authorization": f"Bearer {token}" if token else "", **self._extra})
        return self._headers

    def _authorized(self) -> Headers:
        if self._tokens is None:
            return self._headers
        token = self._tokens.current
        if token is None:
            raise TokenError("no Vertex AI access token is ready")
        return self._with_token(token)

    def build_request(self, call: ApiCall) -> UpstreamRequest:
        model = call.model
        headers = self._authorized()
        if call.api == "rerank":
            return UpstreamRequest(b"POST", self._rank_url, headers,
                                   orjson.dumps(rerank.vertex_request(call.parsed, model)))
        if call.api == "embeddings":
            body = gemini.predict_embed_request(call.parsed)
            url = f"{self._models}google/models/{model}:predict"
        elif is_claude(model):
            if call.api == "messages":
                body = dict(call.parsed)
                beta = call.headers.get("anthropic-beta")
                if beta:
                    headers = headers.copy()
                    headers.setRawHeaders(b"anthropic-beta", [beta.encode("latin-1")])
            else:
                body = chat_to_messages.messages_request(call.parsed, model,
                                                         self._default_max_tokens)
            body.pop("model", None)
            body["anthropic_version"] = ANTHROPIC_VERSION
            url = (f"{self._models}anthropic/models/{model}:"
                   f"{'streamRawPredict' if call.stream else 'rawPredict'}")
        else:
            body = gemini.generate_request(call.parsed)
            url = f"{self._models}google/models/{model}:{gemini.generate_method(call.stream)}"
        return UpstreamRequest(b"POST", url.encode(), headers, orjson.dumps(body))

    def translate_response(self, body: bytes, api: str = "chat") -> tuple[bytes, Usage | None]:
        answer = orjson.loads(body)
        created = int(self._clock.seconds())
        if api == "rerank":  # Cohere's shape; usage from the request (search units)
            return orjson.dumps(rerank.vertex_answer(answer)), None
        if api == "embeddings":
            completion, usage = gemini.predict_embeddings(answer)
        elif answer.get("type") == "message":  # a Claude model's
            completion, usage = chat_to_messages.chat_completion(answer, created)
        else:
            completion, usage = gemini.chat_completion(answer, created)
        return orjson.dumps(completion), usage

    def translate_error(self, status: int, body: bytes) -> bytes | None:
        """Claude's errors are Anthropic's; Vertex's own (auth, quota) are Google's."""
        return (chat_to_messages.openai_error(status, body)
                or gemini.openai_error(status, body))

    def stream_translator(self, wants_usage: bool) -> Any:
        return EitherStream(int(self._clock.seconds()), wants_usage)


class EitherStream:
    """
    A Vertex stream's translator to chat chunks: a Claude model's stream is Anthropic's SSE,
    whose events are named (``event: message_start`` first), a Gemini model's is not; the
    first bytes tell which, as the translator is made before the model's answer is seen.
    """

    def __init__(self, created: int, wants_usage: bool) -> None:
        self._created = created
        self._wants_usage = wants_usage
        self._held = b""
        self._inner: Any = None

    def feed(self, data: bytes) -> bytes:
        if self._inner is None:
            self._held += data
            start = self._held.lstrip()
            if len(start) < len(b"event:"):
                return b""
            kind = (chat_to_messages.MessagesToChatStream if start.startswith(b"event:")
                    else gemini.GeminiToChatStream)
            self._inner = kind(self._created, self._wants_usage)
            data, self._held = self._held, b""
        return self._inner.feed(data)

    def finish(self) -> bytes:
        return b"" if self._inner is None else self._inner.finish()

    @property
    def usage(self) -> Usage | None:
        return None if self._inner is None else self._inner.usage

    @property
    def complete(self) -> bool:
        return self._inner is not None and self._inner.complete

    @property
    def error(self) -> tuple[int, str] | None:
        return None if self._inner is None else self._inner.error

    @property
    def chunks(self) -> int:
        return 0 if self._inner is None else self._inner.chunks


vertex = ProviderPlugin("vertex", VertexSettings, VertexProvider)
