"""
The ``bedrock`` provider: Amazon Bedrock's runtime, reached at
``https://bedrock-runtime.{region}.amazonaws.com`` with SigV4-signed requests.

OpenAI chat calls become Converse (``/model/{id}/converse``) or ConverseStream
(``/converse-stream``, an AWS event stream) calls, and their answers chat completions
(`txgateway.plugins.bedrock.converse`); embeddings calls go to Titan or Cohere embed models'
``/invoke``; rerank calls to the agent runtime's ``Rerank`` (``bedrock-agent-runtime``,
signed alike).  Credentials are the config's, or else the standard AWS chain's
(`txgateway.plugins.bedrock.aws`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import attrs
import orjson
from zope.interface import implementer

from txgateway.config import HttpURL
from txgateway.dialects.openai import error_body
from txgateway.plugins.bedrock.aws import AwsCredentials, signed_headers
from txgateway.plugins.bedrock.converse import (
    ConverseStreamToChat,
    chat_completion,
    converse_request,
    embeddings_request,
    embeddings_response,
    error_message,
)
from txgateway.providers import (
    ApiCall,
    IPreparingProvider,
    ITranslatingProvider,
    ProviderContext,
    ProviderPlugin,
    UpstreamRequest,
)
from txgateway.translate import rerank
from txgateway.usage import Usage


@attrs.frozen
class BedrockSettings:
    #: The AWS region of the runtime endpoint and of the signature, e.g. ``us-east-1``.
    region: str
    #: Static credentials; when ``access_key_id`` is empty, the standard AWS chain is used.
    access_key_id: str = ""
    secret_access_key: str = ""
    session_token: str = ""
    #: The shared config/credentials file profile the chain reads (its default otherwise).
    profile: str = ""
    #: Instead of ``https://bedrock-runtime.{region}.amazonaws.com`` (a VPC endpoint, a test).
    base_url: HttpURL | None = None
    #: Instead of ``https://bedrock-agent-runtime.{region}.amazonaws.com``, where Rerank is.
    agent_runtime_url: HttpURL | None = None
    #: Extra headers sent (and signed) with every request, e.g. a guardrail's.
    headers: dict[str, str] = attrs.field(factory=dict)


@implementer(IPreparingProvider, ITranslatingProvider)
class BedrockProvider:
    kind = "bedrock"
    dialect = "bedrock"
    apis = frozenset({"chat", "embeddings", "rerank"})
    #: ConverseStream answers in AWS event-stream frames, not SSE.
    stream_content_type = b"application/vnd.amazon.eventstream"

    def __init__(self, name: str, settings: BedrockSettings, context: ProviderContext) -> None:
        self.name = name
        self.agent = context.http_agent
        self._clock = context.reactor
        self._region = settings.region
        self._base_url = (settings.base_url
                          or f"https://bedrock-runtime.{settings.region}.amazonaws.com")
        self._rerank_url = (
            settings.agent_runtime_url
            or f"https://bedrock-agent-runtime.{settings.region}.amazonaws.com") + "/rerank"
        self._headers = {"content-type": "application/json", **settings.headers}
        self.credentials = AwsCredentials(
            context.reactor, settings.access_key_id, settings.secret_access_key,
            settings.session_token, settings.profile)

    def prepare(self) -> Any:
        """Before the first request: wait for the AWS credential chain's first lookup."""
        return self.credentials.wait()

    def build_request(self, call: ApiCall) -> UpstreamRequest:
        if call.api == "rerank":
            url = self._rerank_url
            request = rerank.bedrock_request(
                call.parsed, rerank.bedrock_model_arn(call.model, self._region))
        else:
            if call.api == "embeddings":
                action, request = "invoke", embeddings_request(call.parsed, call.model)
            else:
                action = "converse-stream" if call.stream else "converse"
                request = converse_request(call.parsed)
            # Model ids hold ":" and inference profile ARNs "/": one quoted path segment.
            url = f"{self._base_url}/model/{quote(call.model, safe='')}/{action}"
        body = orjson.dumps(request)
        headers = signed_headers(self.credentials.frozen(), "bedrock", self._region, url,
                                 self._headers, body)
        return UpstreamRequest(b"POST", url.encode(), headers, body)

    def translate_response(self, body: bytes, api: str = "chat") -> tuple[bytes, Usage | None]:
        if api == "rerank":  # Cohere's shape; usage from the request (search units)
            response, usage = rerank.bedrock_answer(orjson.loads(body)), None
        elif api == "embeddings":
            response, usage = embeddings_response(orjson.loads(body))
        else:
            response, usage = chat_completion(orjson.loads(body), int(self._clock.seconds()))
        return orjson.dumps(response), usage

    def translate_error(self, status: int, body: bytes) -> bytes | None:
        """An OpenAI error for a Bedrock one; None when ``body`` is not one."""
        error = error_message(body)
        if error is None:
            return None
        message, kind = error
        return error_body(status, message, kind)

    def stream_translator(self, wants_usage: bool) -> Any:
        return ConverseStreamToChat(int(self._clock.seconds()), wants_usage)


bedrock = ProviderPlugin("bedrock", BedrockSettings, BedrockProvider)
