"""
The ``demo`` provider: answers locally, with no network and no key, so a fresh gateway can
be tried at once.

Its answers are deterministic (the same request gives the same text and id), its token
counts are honest under its own stated rule (one token per whitespace-separated word, the
word's leading whitespace included), and it streams real SSE, one token per chunk, with
``chunk_delay`` seconds between chunks.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

import attrs
import orjson
from zope.interface import implementer

from txgateway.dialects.openai import error_body, loads_object
from txgateway.plugins import demo_apis
from txgateway.plugins.demo_realtime import DemoRealtime
from txgateway.providers import (
    ApiCall,
    IRealtimeProvider,
    ProviderContext,
    ProviderPlugin,
    RealtimeTarget,
    UpstreamRequest,
)
from txgateway.providers.local import LocalAgent, LocalAnswer

_TOKEN = re.compile(r"\s*\S+")
_NO_HEADERS: Any = None


def tokens(text: str) -> list[str]:
    """The demo's tokenizer: joined back together, the tokens give the text."""
    return _TOKEN.findall(text)


@attrs.frozen
class DemoSettings:
    #: Seconds between two streamed chunks.
    chunk_delay: float = 0.02
    #: A fixed answer instead of the built-in one.
    reply: str | None = None


@implementer(IRealtimeProvider)
class DemoProvider:
    kind = "demo"
    apis = frozenset({"chat", "completions", "embeddings"})

    def __init__(self, name: str, settings: DemoSettings, context: ProviderContext) -> None:
        self.name = name
        self._settings = settings
        self._clock = context.reactor
        self.agent = LocalAgent(context.reactor, self._answer)

    def build_request(self, call: ApiCall) -> UpstreamRequest:
        return UpstreamRequest(b"POST", b"demo:///" + call.api.encode(), _NO_HEADERS, call.body)

    def realtime_target(self, model: str | None, intent: str,
                        beta: bool) -> RealtimeTarget | None:
        """The in-process demo realtime server, speaking the interface (GA or beta) asked for."""

        def local(listener: Any) -> DemoRealtime:
            return DemoRealtime(self._clock, listener, model or "demo", intent, tokens,
                                self._settings.chunk_delay, beta)

        return RealtimeTarget("demo:///realtime", local=local)

    def _answer(self, method: bytes, url: bytes, body: bytes) -> LocalAnswer:
        if url != b"demo:///chat":
            return self._answer_api(url, body)
        try:
            request = orjson.loads(body)
            messages = request["messages"]
            prompt = [_text(message.get("content")) for message in messages]
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return LocalAnswer(400, b"application/json", [error_body(
                400, "the demo provider expects a chat completions request", "invalid_request")])
        said = next((_text(m.get("content")) for m in reversed(messages)
                     if m.get("role") == "user"), "")
        reply = self._settings.reply or (
            f'Hello from the txgateway demo provider. You said: "{said[:200]}". '
            "Route a model to a real provider in the gateway config to get real answers."
        )
        answer = tokens(reply)
        limit = request.get("max_completion_tokens") or request.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(answer):
            answer, finish = answer[:limit], "length"
        completion = _Completion(
            id="chatcmpl-demo-" + hashlib.sha256(body).hexdigest()[:24],
            created=int(self._clock.seconds()),
            model=request.get("model", "demo"),
            choices=max(int(request.get("n") or 1), 1),
            tokens=answer,
            finish=finish,
            prompt_tokens=sum(len(tokens(text)) for text in prompt),
        )
        if request.get("stream"):
            options = request.get("stream_options") or {}
            return LocalAnswer(200, b"text/event-stream", completion.chunks(
                bool(options.get("include_usage"))), self._settings.chunk_delay)
        return LocalAnswer(200, b"application/json", [completion.whole()])


    def _answer_api(self, url: bytes, body: bytes) -> LocalAnswer:
        """Legacy completions and embeddings (`txgateway.plugins.demo_apis`)."""
        request = loads_object(body)
        if request is None:
            return demo_apis.refusal("a JSON object")
        if url == b"demo:///completions":
            return demo_apis.completion(request, body, int(self._clock.seconds()), tokens,
                                        self._settings.reply, self._settings.chunk_delay)
        return demo_apis.embeddings(request, tokens)


def _text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content
                        if isinstance(part, dict) and part.get("type") == "text")
    return ""


@attrs.frozen
class _Completion:
    id: str
    created: int
    model: str
    choices: int
    tokens: list[str]
    finish: str
    prompt_tokens: int

    def _usage(self) -> dict[str, Any]:
        completion = len(self.tokens) * self.choices
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        }

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "system_fingerprint": "txgateway-demo"}

    def whole(self) -> bytes:
        text = "".join(self.tokens)
        return orjson.dumps({
            **self._envelope("chat.completion"),
            "choices": [
                {"index": index,
                 "message": {"role": "assistant", "content": text, "refusal": None},
                 "logprobs": None, "finish_reason": self.finish}
                for index in range(self.choices)
            ],
            "usage": self._usage(),
        })

    def chunks(self, include_usage: bool) -> list[bytes]:
        extra = {"usage": None} if include_usage else {}

        def event(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
            chunk = {**self._envelope("chat.completion.chunk"), **extra, "choices": [
                {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return b"data: " + orjson.dumps(chunk) + b"\n\n"

        out = []
        for index in range(self.choices):
            out.append(event(index, {"role": "assistant", "content": ""}))
            out.extend(event(index, {"content": token}) for token in self.tokens)
            out.append(event(index, {}, self.finish))
        if include_usage:
            usage = {**self._envelope("chat.completion.chunk"), "choices": [],
                     "usage": self._usage()}
            out.append(b"data: " + orjson.dumps(usage) + b"\n\n")
        out.append(b"data: [DONE]\n\n")
        return out


demo = ProviderPlugin("demo", DemoSettings, DemoProvider)
