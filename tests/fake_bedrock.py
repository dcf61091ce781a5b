"""
A fake Amazon Bedrock runtime on a loopback port: it checks every request's SigV4 signature
(recomputed with botocore from what it received and the keys it knows; a bad one is a 403
``InvalidSignatureException``) and answers Converse with JSON, ConverseStream with real AWS
event-stream frames (CRCs included, written in pieces cut at awkward byte offsets), Titan
and Cohere embedding ``invoke`` calls, and the agent runtime's ``POST /rerank`` (its model in
the body's ``modelArn``; scores from `tests.fake_cohere.scores`, best first, as Bedrock ranks).

What it does is chosen by the model id in the path: ``error-<status>`` answers that Bedrock
error, ``stream-exception`` breaks its stream with a ``modelStreamErrorException`` frame,
``corrupt-stream`` sends a frame with a bad CRC, ``max-tokens`` and ``guardrail`` stop for
those reasons; tools in the request are all called.
"""

from __future__ import annotations

import hmac
import struct
import time
from binascii import crc32
from typing import Any
from urllib.parse import unquote

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from twisted.internet import reactor
from twisted.web.server import NOT_DONE_YET

from tests.fake_cohere import scores
from tests.fake_openai import FakeUpstream
from txgateway.web.site import GatewaySite

REGION = "us-west-2"
ACCESS_KEY = "AKIDFAKEBEDROCK"
SECRET_KEY = "fake/bedrock+secret"
SESSION_TOKEN = "fake-session-token"
TEXT = ["Hel", "lo", " there", "!"]
TOOL_INPUT_FRAGMENTS = ['{"ci', 'ty": "Pa', 'ris"}']
#: Converse's inputTokens leaves out the cache reads and writes.
USAGE = {"inputTokens": 20, "outputTokens": 9, "totalTokens": 41,
         "cacheReadInputTokens": 7, "cacheWriteInputTokens": 5}
STOP_REASONS = {"max-tokens": "max_tokens", "guardrail": "guardrail_intervened"}
ERRORS = {400: "ValidationException", 403: "AccessDeniedException",
          404: "ResourceNotFoundException", 408: "ModelTimeoutException",
          429: "ThrottlingException", 503: "ServiceUnavailableException"}
#: The sizes the stream is written in, over and over: frames are cut anywhere.
PIECES = (1, 3, 17, 5, 64, 2, 11, 40)
TITAN_VECTOR = [0.25, -0.5, 0.125]


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude, its CRC, string headers, payload, CRC."""
    encoded = b"".join(
        struct.pack(">B", len(name)) + name.encode() + b"\x07"
        + struct.pack(">H", len(value.encode())) + value.encode()
        for name, value in headers.items())
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", crc32(message))


def event(name: str, data: dict[str, Any]) -> bytes:
    """A ConverseStream event, with the ``p`` padding Bedrock adds to hide lengths."""
    return frame({":event-type": name, ":content-type": "application/json",
                  ":message-type": "event"}, orjson.dumps({**data, "p": "abcdefghij"}))


def exception(kind: str, message: str) -> bytes:
    return frame({":exception-type": kind, ":content-type": "application/json",
                  ":message-type": "exception"}, orjson.dumps({"message": message}))


def signature_problem(request: Any, body: bytes, secrets: dict[str, str]) -> str | None:
    """Why the request's SigV4 signature is not right, or None when it is."""
    authorization = request.getHeader("authorization") or ""
    scheme, _, fields_text = authorization.partition(" ")
    if scheme != "AWS4-HMAC-SHA256":
        return "Missing Authentication Token"
    fields = dict(part.strip().split("=", 1) for part in fields_text.split(","))
    access_key, day, region, service, _ = fields["Credential"].split("/")
    if access_key not in secrets:
        return "The security token included in the request is invalid."
    if (region, service) != (REGION, "bedrock"):
        return f"Credential should be scoped to a valid region and service, not {region}"
    stamp = request.getHeader("x-amz-date") or ""
    if not stamp.startswith(day) or abs(
            time.mktime(time.strptime(stamp, "%Y%m%dT%H%M%SZ")) - time.mktime(
                time.gmtime())) > 300:
        return "Signature expired or not yet valid"
    names = fields["SignedHeaders"].split(";")
    if "host" not in names or "x-amz-date" not in names:
        return "host and x-amz-date must be signed"
    signed = AWSRequest(method=request.method.decode(),
                        url="http://" + request.getHeader("host") + request.uri.decode(),
                        data=body, headers={name: request.getHeader(name) for name in names})
    signed.context["timestamp"] = stamp
    token = request.getHeader("x-amz-security-token")
    signer = SigV4Auth(ReadOnlyCredentials(access_key, secrets[access_key], token), "bedrock",
                       region)
    expected = signer.signature(signer.string_to_sign(signed, signer.canonical_request(signed)),
                                signed)
    if not hmac.compare_digest(expected, fields["Signature"]):
        return ("The request signature we calculated does not match the signature you "
                "provided.")
    return None


class FakeBedrock(FakeUpstream):
    def __init__(self, secrets: dict[str, str]) -> None:
        super().__init__()
        #: Secret keys by access key id.
        self.secrets = secrets

    def render_POST(self, request: Any) -> Any:
        raw = request.content.read()
        body = orjson.loads(raw)
        if request.path == b"/rerank":
            action = "rerank"
            configuration = body.get("rerankingConfiguration", {}).get(
                "bedrockRerankingConfiguration", {})
            arn = configuration.get("modelConfiguration", {}).get("modelArn", "")
            model = arn.rpartition("/")[2].removeprefix("fake.")
        else:
            _, _, quoted, action = request.path.decode().split("/")
            model = unquote(quoted).removeprefix("fake.")
        self.requests.append((request.path, dict(request.requestHeaders.getAllRawHeaders()),
                              body))
        request.notifyFinish().addErrback(lambda _: self._dropped(model))
        request.setHeader(b"x-amzn-requestid", b"fake-request-id")
        problem = signature_problem(request, raw, self.secrets)
        if problem is not None:
            return self._error(request, 403, "InvalidSignatureException", problem)
        if model.startswith("error-"):
            status = int(model.split("-")[1])
            return self._error(request, status, ERRORS[status], f"fake bedrock error {status}")
        if action == "invoke":
            return self._embeddings(request, model, body)
        if action == "rerank":
            return self._rerank(request, body)
        blocks = self._blocks(body)
        stop = STOP_REASONS.get(model, "tool_use" if body.get("toolConfig") else "end_turn")
        if action == "converse-stream":
            return self._stream(request, model, blocks, stop)
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps({
            "output": {"message": {"role": "assistant", "content": [
                {"text": "".join(TEXT)},
                *({"toolUse": {"toolUseId": use, "name": name, "input": {"city": "Paris"}}}
                  for use, name in blocks)]}},
            "stopReason": stop, "usage": USAGE, "metrics": {"latencyMs": 12}})

    @staticmethod
    def _error(request: Any, status: int, kind: str, message: str) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"x-amzn-errortype", f"{kind}:http://internal.amazon.com/".encode())
        if status == 429:
            request.setHeader(b"retry-after", b"7")
        return orjson.dumps({"message": message})

    @staticmethod
    def _blocks(body: dict[str, Any]) -> list[tuple[str, str]]:
        """The tool calls the answer makes: (toolUseId, name), one per tool."""
        tools = (body.get("toolConfig") or {}).get("tools") or []
        return [(f"tooluse_fake_{tool['toolSpec']['name']}", tool["toolSpec"]["name"])
                for tool in tools]

    def _stream(self, request: Any, model: str, blocks: list[tuple[str, str]],
                stop: str) -> Any:
        request.setHeader(b"content-type", b"application/vnd.amazon.eventstream")
        frames = [event("messageStart", {"role": "assistant"})]
        frames += [event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": t}})
                   for t in TEXT]
        frames.append(event("contentBlockStop", {"contentBlockIndex": 0}))
        for index, (use, name) in enumerate(blocks, start=1):
            frames.append(event("contentBlockStart", {"contentBlockIndex": index, "start": {
                "toolUse": {"toolUseId": use, "name": name}}}))
            frames += [event("contentBlockDelta", {"contentBlockIndex": index,
                                                   "delta": {"toolUse": {"input": part}}})
                       for part in TOOL_INPUT_FRAGMENTS]
            frames.append(event("contentBlockStop", {"contentBlockIndex": index}))
        frames.append(event("messageStop", {"stopReason": stop}))
        frames.append(event("metadata", {"usage": USAGE, "metrics": {"latencyMs": 12}}))
        if model == "stream-exception":
            frames = frames[:3] + [exception("modelStreamErrorException",
                                             "The model stream failed")]
        elif model == "corrupt-stream":
            bad = bytearray(frames[2])
            bad[-6] ^= 0xFF  # a payload byte: the message CRC no longer matches
            frames = [*frames[:2], bytes(bad), *frames[3:]]
        # The last frame goes with the body's end, as Bedrock's does.
        self._write_in_pieces(request, b"".join(frames[:-1]), frames[-1], 0)
        return NOT_DONE_YET

    def _write_in_pieces(self, request: Any, data: bytes, last: bytes, turn: int) -> None:
        """Writes ``data`` a piece per reactor turn, so the reads split frames anywhere."""
        if request.finished or request._disconnected:
            return
        if not data:
            request.write(last)
            request.finish()
            return
        size = PIECES[turn % len(PIECES)]
        request.write(data[:size])
        reactor.callLater(0, self._write_in_pieces, request, data[size:], last, turn + 1)

    @staticmethod
    def _embeddings(request: Any, model: str, body: dict[str, Any]) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        if model.startswith("cohere.embed"):
            return orjson.dumps({
                "id": "fake-embed", "response_type": "embeddings_floats", "texts": body["texts"],
                "embeddings": [[float(i), 0.5] for i, _ in enumerate(body["texts"])]})
        vector = TITAN_VECTOR[:body.get("dimensions") or len(TITAN_VECTOR)]
        return orjson.dumps({"embedding": vector, "embeddingsByType": {"float": vector},
                             "inputTextTokenCount": len(body["inputText"].split())})


    def _rerank(self, request: Any, body: dict[str, Any]) -> bytes:
        """Rerank's answer, after the checks Bedrock makes of the request's shape."""
        configuration = body["rerankingConfiguration"]
        model = configuration["bedrockRerankingConfiguration"]["modelConfiguration"]["modelArn"]
        queries, sources = body.get("queries"), body.get("sources") or []
        texts = [(source.get("inlineDocumentSource") or {}).get("textDocument", {}).get("text")
                 for source in sources if source.get("type") == "INLINE"]
        wanted = configuration["bedrockRerankingConfiguration"].get("numberOfResults", 1)
        if (configuration.get("type") != "BEDROCK_RERANKING_MODEL"
                or not model.startswith(f"arn:aws:bedrock:{REGION}::foundation-model/")
                or not isinstance(queries, list) or len(queries) != 1
                or queries[0].get("type") != "TEXT"
                or not sources or len(texts) != len(sources)
                or not all(isinstance(text, str) for text in texts)
                or not 1 <= wanted <= len(sources)):
            return self._error(request, 400, "ValidationException",
                               "1 validation error detected: the rerank request is malformed")
        request.setHeader(b"content-type", b"application/json")
        ranked = scores(queries[0]["textQuery"]["text"], texts)[:wanted]
        return orjson.dumps({"results": [{"index": index, "relevanceScore": score}
                                         for index, score in ranked]})


async def start_fake_bedrock(
        secrets: dict[str, str] | None = None) -> tuple[FakeBedrock, Any, GatewaySite]:
    """The fake, its port and its site (whose ``close_connections`` tests call at the end)."""
    fake = FakeBedrock(secrets or {ACCESS_KEY: SECRET_KEY})
    site = GatewaySite(fake)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return fake, port, site
