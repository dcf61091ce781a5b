"""
``/p/{provider}/{path}``: any method and path, forwarded to a configured provider's own API
with the gateway's credentials for it, for the calls the gateway has no endpoint for.

A provider offers this by providing `IPassthroughProvider`: ``passthrough_base`` (its API's
base URL, str or bytes: the URL ``/p/{provider}`` stands for) and ``passthrough_headers`` (its
credentials and configured headers, a mapping).  The caller's credentials are never forwarded,
only configured providers are reachable, paths that try to leave the base URL are refused,
redirects are relayed and never followed (the gateway's agent follows none), hop-by-hop headers
are dropped both ways.  The answer is relayed as it arrives (an error answer whole, scrubbed of
secrets); its usage (and model, when the request named none) is read on the side, from a JSON
answer in OpenAI's or Anthropic's shape or from an SSE answer: chat and completions chunks,
Responses' final event, Anthropic's ``message_start`` and ``message_delta``.  The caller's
``Accept-Encoding`` goes up as sent (the openai SDK asks for gzip): a gzip'd answer is relayed
as it came and inflated on the side for its usage.
"""

from __future__ import annotations

import zlib
from typing import Any
from urllib.parse import unquote

import attrs
import orjson
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from txgateway.accounting import Exchange, Tally
from txgateway.admission import Refusal
from txgateway.dialects.multipart import SegmentsProducer
from txgateway.dialects.openai import error_body
from txgateway.dialects.openai_rest import usage_of
from txgateway.dialects.redact import Redactor
from txgateway.gateway import Gateway
from txgateway.providers import IPassthroughProvider, UpstreamRequest
from txgateway.routing import Target
from txgateway.streams import EventSplitter, data_of, events
from txgateway.upstream import UpstreamCall
from txgateway.usage import Usage, estimate_tokens
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.relay import Bytes, Relay
from txgateway.web.resource import GatewayResource
from txgateway.web.runner import admit_request, attempt, serve

#: Headers of one connection only (RFC 9110 section 7.6.1), never forwarded either way.
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"proxy-authenticate",
                        b"proxy-authorization"})
#: Caller headers not forwarded: set anew for the upstream, or the caller's credentials.
NOT_FORWARDED = HOP_BY_HOP | {b"host", b"content-length", b"authorization", b"x-api-key",
                              b"api-key", b"cookie", b"x-goog-api-key"}
#: Upstream headers the gateway's own response sets.
NOT_RELAYED = HOP_BY_HOP | {b"date", b"server"}
#: The largest JSON answer, or SSE event, read for its usage (the rest is relayed all the same).
USAGE_PEEK_LIMIT = 1024 * 1024
#: In SSE bytes, a token count's key (``"prompt_tokens"``, ``"output_tokens"``...): found only
#: in the events that carry usage, never in a ``"usage":null`` nor in escaped text.
TOKEN_COUNT = b'_tokens"'
#: The content codings whose answers are inflated for their usage.
GZIP = frozenset({b"gzip", b"x-gzip"})
#: The most a gzip'd SSE answer is inflated to for its usage (a JSON answer: `USAGE_PEEK_LIMIT`),
#: and the most inflated from one piece at a time.
INFLATE_LIMIT, INFLATE_STEP = 64 * USAGE_PEEK_LIMIT, 64 * 1024


class Passthrough(GatewayResource):
    openapi = Endpoint("Passthrough", below={"{provider}/{path}": {
        method: Operation(f"{method} the provider's own API, with the gateway's credentials",
                          None if method in ("GET", "DELETE") else "Object")
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")}})
    isLeaf = True
    route = "passthrough"

    def render(self, request: Any) -> Any:
        return serve(self._gateway, request, self.route, lambda exchange, tally, call:
                     self._pass(request, exchange, tally, call), error_body)

    def _target(self, request: Any) -> tuple[Any, bytes]:
        """The provider and the upstream URL the request names, or a `Refusal`."""
        if not request.postpath or not request.postpath[0]:
            raise Refusal(404, "name a provider: /p/{provider}/{path}", "unknown_url")
        name = unquote(request.postpath[0].decode("utf-8", "replace"))
        provider = self._gateway.providers.get(name)
        if not IPassthroughProvider.providedBy(provider):
            raise Refusal(404, f"no configured provider `{name}` offers passthrough",
                           "unknown_provider")
        segments = request.postpath[1:]
        for segment in segments:
            decoded = unquote(segment.decode("latin-1"))
            if (decoded in (".", "..") or "/" in decoded or "\\" in decoded
                    or decoded.endswith(":")):
                raise Refusal(400, "the path must stay under the provider's base URL",
                               "invalid_path")
        if b"" in segments[:-1]:
            raise Refusal(400, "the path must not contain empty segments", "invalid_path")
        base = provider.passthrough_base
        if isinstance(base, str):
            base = base.encode()
        url = base.rstrip(b"/") + b"/" + b"/".join(segments)
        _, question, query = request.uri.partition(b"?")
        return provider, url + question + query

    async def _pass(self, request: Any, exchange: Exchange, tally: Tally,
                    call: UpstreamCall) -> None:
        """Admit the caller, then the one target's `attempt` (its retries and cooldown)."""
        gateway = self._gateway
        provider, url = self._target(request)
        target = Target(provider, "")
        tally.target = target  # recorded even when the caller is refused
        raw = request.content.getvalue()
        tally.model = _model_in(raw, request)
        admitted = await admit_request(gateway, request, exchange, tally.model,
                                       estimate_tokens(len(raw)), routed=False)
        if admitted.principal.models and not _routed_to(gateway, tally.model, provider):
            # A key limited to some models reaches a provider's own API only for a model
            # its routes send there as it is named: else any allowed name would do.
            raise Refusal(403, f"This key may not use the model `{tally.model}` through "
                          f"`{provider.name}`.", "model_not_allowed")
        await attempt(gateway, request, tally, [target], call,
                      lambda target: self._relay(request, tally, target, url, raw, call))

    async def _relay(self, request: Any, tally: Tally, target: Target, url: bytes,
                     raw: bytes, call: UpstreamCall) -> None:
        """One attempt: the answer relayed as it arrives, its usage metered on the way."""
        gateway, provider = self._gateway, target.provider
        response = await call.send(provider.agent, UpstreamRequest(
            request.method, url, _forwarded(request, provider),
            SegmentsProducer([memoryview(raw)]) if raw else None))
        _start(request, response, gateway.redactor)
        tally.status = response.code
        if response.code >= 400 and request.method != b"HEAD":
            # An error may quote the credentials sent: read whole, scrubbed, then answered.
            body = _scrubbed(request, response, await call.read(response), gateway.redactor)
            tally.error = f"upstream status {response.code}"
            request.setHeader(b"content-length", b"%d" % len(body))
            if not call.aborted:
                request.write(body)
                request.finish()
            return
        meter = _usage_reader(response)
        tally.stream = meter is not None and meter.stream
        relay = Relay(gateway, request, tally, call, None,
                      Bytes() if meter is None else meter, None)
        call.deliver(response, relay)
        await relay.done
        if meter is not None:
            if tally.usage is not None and tally.error is not None:
                tally.usage = attrs.evolve(tally.usage, estimated=True)  # cut short
            tally.model = tally.model or meter.model


def _routed_to(gateway: Gateway, model: str, provider: Any) -> bool:
    """Whether a route sends ``model`` to ``provider`` under that same name."""
    return any(target.provider.name == provider.name and target.model == model
               for target in gateway.router.plan(model) or ())


def _model_in(raw: bytes, request: Any) -> str:
    """The ``model`` of a JSON request body, for the record; "" for anything else."""
    content_type = request.getHeader(b"content-type") or b""
    if not raw or b"json" not in content_type or len(raw) > USAGE_PEEK_LIMIT:
        return ""
    try:
        model = orjson.loads(raw).get("model")
    except (orjson.JSONDecodeError, AttributeError):
        return ""
    return model if isinstance(model, str) else ""


def _forwarded(request: Any, provider: Any) -> Headers:
    """The caller's headers for the upstream: its credentials out, the provider's in."""
    headers = Headers()
    dropped = NOT_FORWARDED | _connection_tokens(request.requestHeaders)
    for name, values in request.requestHeaders.getAllRawHeaders():
        if name.lower() not in dropped:
            headers.setRawHeaders(name, values)
    for name, value in provider.passthrough_headers.items():
        if value:
            headers.setRawHeaders(name.encode(), [value.encode()])
    return headers


def _connection_tokens(headers: Headers) -> frozenset[bytes]:
    """Headers a ``Connection`` header names as hop-by-hop."""
    listed = b",".join(headers.getRawHeaders(b"connection", []))
    return frozenset(token.strip().lower() for token in listed.split(b",") if token.strip())


def _start(request: Any, response: Any, redactor: Redactor) -> None:
    """
    The upstream's status and headers, scrubbed of secrets (a header may echo the key sent).
    Twisted's client has already taken the connection headers (Connection, Content-Length,
    Transfer-Encoding ...) out of ``response.headers``; the length is given back when known.
    """
    request.setResponseCode(response.code, response.phrase)
    for name, values in response.headers.getAllRawHeaders():
        if name.lower() not in NOT_RELAYED:
            request.responseHeaders.setRawHeaders(name, [redactor.bytes(v) for v in values])
    if response.length is not UNKNOWN_LENGTH and request.method != b"HEAD":
        request.setHeader(b"content-length", b"%d" % response.length)


def _scrubbed(request: Any, response: Any, body: bytes, redactor: Redactor) -> bytes:
    """
    An error answer scrubbed of secrets: a gzip'd one inflated first (and answered plain), so
    that the scrub reads its text; one that cannot be read (another coding, not inflating, or
    past `USAGE_PEEK_LIMIT` inflated) is answered as an OpenAI error instead of as it came.
    """
    codings = b",".join(response.headers.getRawHeaders(b"content-encoding", []))
    coding = codings.strip().lower()
    if coding and coding != b"identity":
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            inflated = inflater.decompress(body, USAGE_PEEK_LIMIT + 1)
        except zlib.error:
            inflated = None
        request.responseHeaders.removeHeader(b"content-encoding")
        if coding not in GZIP or inflated is None or not inflater.eof:
            request.setHeader(b"content-type", b"application/json")
            return error_body(response.code, f"the provider answered {response.code} in a body "
                              "the gateway could not read", "upstream_error")
        body = inflated
    return redactor.bytes(body)


def _usage_reader(response: Any) -> UsageReader | None:
    """
    The meter (`txgateway.web.relay.ITranscoder`) of a successful JSON or SSE answer, plain
    or gzip'd: its bytes relayed as they came, its usage read on the side; None for anything
    else.
    """
    headers = response.headers
    if response.code != 200:
        return None
    content_type = headers.getRawHeaders(b"content-type", [b""])[0].lower()
    reader: UsageReader
    if b"text/event-stream" in content_type:
        reader, limit = StreamUsage(), INFLATE_LIMIT
    elif b"json" in content_type:
        reader, limit = AnswerUsage(), USAGE_PEEK_LIMIT + 1  # past it, AnswerUsage gives up
    else:
        return None
    codings = b",".join(headers.getRawHeaders(b"content-encoding", []))
    coding = codings.strip().lower()
    if not coding or coding == b"identity":
        return reader
    return Inflating(reader, limit) if coding in GZIP else None


class AnswerUsage(Bytes):
    """The usage and model of a JSON answer, read once it is whole (up to a size)."""

    stream = False

    def __init__(self) -> None:
        self._parts: list[bytes] | None = []
        self._size = 0
        self.model = ""

    def feed(self, data: bytes) -> bytes:
        if self._parts is not None:
            self._size += len(data)
            if self._size > USAGE_PEEK_LIMIT:
                self._parts = None
            else:
                self._parts.append(data)
        return data

    def finish(self) -> bytes:
        self.usage, self.model = self.read()
        return b""

    def read(self) -> tuple[Usage | None, str]:
        try:
            answer = orjson.loads(b"".join(self._parts or ()))
        except orjson.JSONDecodeError:
            return None, ""
        if not isinstance(answer, dict):
            return None, ""
        return usage_of(answer.get("usage")), _text(answer.get("model"))


class StreamUsage(Bytes):
    """
    The usage and model of an SSE answer, whatever its dialect, read as the events pass: only
    the runs of whole events that hold a `TOKEN_COUNT` are split and parsed, so a stream
    without usage costs a byte search per read.

    OpenAI's chat and completions chunks carry ``usage`` (with
    ``stream_options.include_usage``), the Responses API's final event ``response.usage``,
    Anthropic's ``message_start`` ``message.usage`` (input and cache) and ``message_delta``
    ``usage`` (output so far, and lately the input again): Anthropic's are merged, field by
    field, each value replacing the last.
    """

    stream = True

    def __init__(self) -> None:
        self._splitter: EventSplitter | None = EventSplitter()
        self._anthropic: dict[str, Any] = {}
        self.model = ""

    def feed(self, data: bytes) -> bytes:
        if self._splitter is None:
            return data
        run = self._splitter.feed(data)
        if TOKEN_COUNT in run:
            for event in events(run):
                if TOKEN_COUNT in event:
                    self._read(data_of(event))
        if len(self._splitter.pending) > USAGE_PEEK_LIMIT:  # not an event stream after all
            self._splitter = None
        return data

    def _read(self, data: bytes) -> None:
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            return
        if not isinstance(payload, dict):
            return
        kind = payload.get("type")
        if kind in ("message_start", "message_delta"):
            holder = payload.get("message") if kind == "message_start" else payload
            usage = holder.get("usage") if isinstance(holder, dict) else None
            if isinstance(holder, dict) and isinstance(usage, dict):
                self._anthropic.update((k, v) for k, v in usage.items() if v is not None)
                self._found(Usage.from_anthropic(self._anthropic), holder)
        elif isinstance(payload.get("response"), dict):
            response = payload["response"]
            self._found(Usage.from_responses(response.get("usage")), response)
        else:
            self._found(usage_of(payload.get("usage")), payload)

    def _found(self, usage: Usage | None, holder: dict[str, Any]) -> None:
        if usage is not None:
            self.usage = usage
            self.model = _text(holder.get("model")) or self.model

    def read(self) -> tuple[Usage | None, str]:
        return self.usage, self.model


class Inflating:
    """
    A usage ``reader`` shown a gzip'd body inflated, as it passes, in steps of at most
    `INFLATE_STEP` bytes and up to ``limit`` bytes in all: past that, or on bytes that do not
    inflate, the reader is shown no more (and keeps what it read).  The body is relayed as it
    came.
    """

    error = None
    chunks = 0
    complete = False

    def __init__(self, reader: AnswerUsage | StreamUsage, limit: int) -> None:
        self._reader = reader
        self.stream = reader.stream
        self._inflater: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip's framing
        self._left = limit

    @property
    def usage(self) -> Usage | None:
        return self._reader.usage

    @property
    def model(self) -> str:
        return self._reader.model

    def feed(self, data: bytes) -> bytes:
        piece = data
        while piece and self._inflater is not None:
            try:
                inflated = self._inflater.decompress(piece, min(INFLATE_STEP, self._left))
            except zlib.error:
                self._inflater = None
                break
            self._left -= len(inflated)
            self._reader.feed(inflated)
            if self._left <= 0 or self._inflater.eof:
                self._inflater = None
            else:
                piece = self._inflater.unconsumed_tail
        return data

    def finish(self) -> bytes:
        return self._reader.finish()

    def read(self) -> tuple[Usage | None, str]:
        return self._reader.read()


UsageReader = AnswerUsage | StreamUsage | Inflating


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
