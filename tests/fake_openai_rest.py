"""
The fake OpenAI server's REST APIs beside chat, in their real wire formats: legacy
completions, embeddings (float and base64), images, speech (audio bytes in several chunks,
paced), transcriptions and translations (multipart, parsed with the standard library's email
parser, independent of the gateway's), and the echo and redirect endpoints passthrough tests
call with any method (``echo-gzip`` and ``echo-gzip-stream`` answer gzip'd to a caller that
accepts it, as OpenAI's servers do).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import struct
import time
import zlib
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson
from twisted.internet import reactor
from twisted.web.server import NOT_DONE_YET

COMPLETION_TEXT = ["Once", " upon", " a", " time"]
COMPLETION_USAGE = {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}
EMBEDDING_USAGE = {"prompt_tokens": 7, "total_tokens": 7}
IMAGE_USAGE = {"input_tokens": 50, "output_tokens": 4160, "total_tokens": 4210,
               "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}
TRANSCRIPT = "the quick brown fox"
TOKEN_TRANSCRIPTION_USAGE = {"type": "tokens", "input_tokens": 120, "output_tokens": 9,
                             "total_tokens": 129,
                             "input_token_details": {"audio_tokens": 118, "text_tokens": 2}}
SPEECH_CHUNKS = [bytes([index]) * 4096 for index in range(5)]
SPEECH_CHUNK_DELAY = 0.1
ECHO_USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
#: The chat chunks ``echo-gzip-stream`` sends, each gzip'd on its own flush.
GZIP_STREAM = [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in (
    {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-gz", "choices": [
        {"index": 0, "delta": {"content": "zipped"}, "finish_reason": "stop"}]},
    {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-gz", "choices": [],
     "usage": {"prompt_tokens": 13, "completion_tokens": 7, "total_tokens": 20}})] + [
    b"data: [DONE]\n\n"]


def embedding(index: int, dimensions: int) -> list[float]:
    """The fake's vector for the ``index``-th input (float32-exact values)."""
    return [(index + 1) / 2 ** (position + 1) for position in range(dimensions)]


class RestFakes:
    """Mixed into the fake OpenAI server: answers every path but chat completions."""

    #: Set when the speech answer has been written whole.
    speech_finished = False
    #: Each multipart request: (path, {field: value}, {file field: (filename, content type,
    #: sha256 hex, size)}).
    forms: list[tuple[bytes, dict[str, str], dict[str, tuple[str, str, str, int]]]]
    #: Each passthrough echo request: (method, uri, headers, body).
    echoes: list[tuple[bytes, bytes, dict[bytes, list[bytes]], bytes]]

    def __init__(self) -> None:
        super().__init__()
        self.forms = []
        self.echoes = []

    def render(self, request: Any) -> Any:
        path = request.path
        if path.startswith(b"/v1/echo") or path.startswith(b"/v1/redirect"):
            return self._echo(request)
        handler = {
            b"completions": self._text_completion,
            b"embeddings": self._embeddings,
            b"generations": self._images,
            b"edits": self._form,
            b"speech": self._speech,
            b"transcriptions": self._form,
            b"translations": self._form,
        }.get(path.rsplit(b"/", 1)[-1])
        if handler is None or path.endswith(b"/chat/completions"):
            return super().render(request)  # type: ignore[misc]
        return handler(request)

    def _maybe_error(self, request: Any, body: dict[str, Any]) -> bytes | None:
        model = body.get("model", "")
        if model.startswith("error-"):
            return self._error(request, int(model.split("-")[1]))  # type: ignore[attr-defined]
        return None

    def _json(self, request: Any, answer: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps(answer)

    def _text_completion(self, request: Any) -> Any:
        body = self.received(request)  # type: ignore[attr-defined]
        failed = self._maybe_error(request, body)
        if failed is not None:
            return failed
        envelope = {"id": "cmpl-fake", "object": "text_completion", "created": int(time.time()),
                    "model": body["model"]}
        prompts = body["prompt"]
        if isinstance(prompts, str) or isinstance(prompts[0], int):
            prompts = [prompts]
        count = len(prompts) * (body.get("n") or 1)
        if not body.get("stream"):
            return self._json(request, {**envelope, "choices": [
                {"text": "".join(COMPLETION_TEXT), "index": index, "logprobs": None,
                 "finish_reason": "stop"} for index in range(count)],
                "usage": COMPLETION_USAGE})
        request.setHeader(b"content-type", b"text/event-stream")
        for text in COMPLETION_TEXT:
            request.write(b"data: " + orjson.dumps({**envelope, "choices": [
                {"text": text, "index": 0, "logprobs": None, "finish_reason": None}]}) + b"\n\n")
        if (body.get("stream_options") or {}).get("include_usage"):
            request.write(b"data: " + orjson.dumps(
                {**envelope, "choices": [], "usage": COMPLETION_USAGE}) + b"\n\n")
        request.write(b"data: [DONE]\n\n")
        request.finish()
        return NOT_DONE_YET

    def _embeddings(self, request: Any) -> bytes:
        body = self.received(request)  # type: ignore[attr-defined]
        failed = self._maybe_error(request, body)
        if failed is not None:
            return failed
        inputs = body["input"]
        if isinstance(inputs, str) or isinstance(inputs[0], int):
            inputs = [inputs]
        dimensions = body.get("dimensions") or 3
        data = []
        for index in range(len(inputs)):
            vector: Any = embedding(index, dimensions)
            if body.get("encoding_format") == "base64":
                vector = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": vector})
        return self._json(request, {"object": "list", "data": data, "model": body["model"],
                                    "usage": EMBEDDING_USAGE})

    def _images(self, request: Any) -> Any:
        body = self.received(request)  # type: ignore[attr-defined]
        failed = self._maybe_error(request, body)
        if failed is not None:
            return failed
        token_billed = body["model"].startswith("gpt-image")
        if body.get("stream"):
            request.setHeader(b"content-type", b"text/event-stream")
            for kind, extra in (("image_generation.partial_image", {"partial_image_index": 0}),
                                ("image_generation.completed", {"usage": IMAGE_USAGE})):
                event = {"type": kind, "b64_json": "aW1n", "created_at": 1, **extra}
                request.write(b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event)
                              + b"\n\n")
            request.finish()
            return NOT_DONE_YET
        answer: dict[str, Any] = {"created": int(time.time()), "data": [
            {"b64_json": "aW1n", "revised_prompt": body["prompt"]}
            for _ in range(body.get("n") or 1)]}
        if token_billed:
            answer["usage"] = IMAGE_USAGE
        return self._json(request, answer)

    def _speech(self, request: Any) -> Any:
        body = self.received(request)  # type: ignore[attr-defined]
        failed = self._maybe_error(request, body)
        if failed is not None:
            return failed
        request.setHeader(b"content-type", b"audio/mpeg")
        chunks = list(SPEECH_CHUNKS)

        def write_next() -> None:
            if request._disconnected:
                return
            request.write(chunks.pop(0))
            if chunks:
                reactor.callLater(SPEECH_CHUNK_DELAY, write_next)
            else:
                self.speech_finished = True
                request.finish()

        write_next()
        return NOT_DONE_YET

    def _form(self, request: Any) -> Any:
        """A multipart request, parsed with the email package; answered by its model."""
        raw = request.content.read()
        content_type = request.getHeader(b"content-type") or b""
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type + b"\r\n\r\n" + raw)
        fields: dict[str, str] = {}
        files: dict[str, tuple[str, str, str, int]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            content = part.get_payload(decode=True)
            filename = part.get_filename()
            if filename is None:
                fields[name] = content.decode()
            else:
                files[name] = (filename, part.get_content_type(),
                               hashlib.sha256(content).hexdigest(), len(content))
        self.forms.append((request.path, fields, files))
        self.requests.append((request.path,  # type: ignore[attr-defined]
                              dict(request.requestHeaders.getAllRawHeaders()), fields))
        failed = self._maybe_error(request, fields)
        if failed is not None:
            return failed
        if request.path.endswith(b"/edits"):
            return self._json(request, {"created": 1, "data": [{"b64_json": "ZWRpdA=="}],
                                        "usage": IMAGE_USAGE})
        duration_billed = fields["model"].startswith("whisper")
        usage = ({"type": "duration", "seconds": 12.5} if duration_billed
                 else TOKEN_TRANSCRIPTION_USAGE)
        if fields.get("stream") == "true":
            request.setHeader(b"content-type", b"text/event-stream")
            for word in TRANSCRIPT.split(" "):
                request.write(b"data: " + orjson.dumps(
                    {"type": "transcript.text.delta", "delta": word + " "}) + b"\n\n")
            request.write(b"data: " + orjson.dumps(
                {"type": "transcript.text.done", "text": TRANSCRIPT, "usage": usage}) + b"\n\n")
            request.finish()
            return NOT_DONE_YET
        if fields.get("response_format") == "text":
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return TRANSCRIPT.encode()
        return self._json(request, {"text": TRANSCRIPT, "usage": usage})

    def _echo(self, request: Any) -> Any:
        """Any method: what arrived, as JSON with a usage; or a redirect, or a paced body."""
        body = request.content.read()
        self.echoes.append((request.method, request.uri,
                            dict(request.requestHeaders.getAllRawHeaders()), body))
        if request.path.startswith(b"/v1/redirect"):
            request.setResponseCode(302)
            request.setHeader(b"location", b"/v1/echo/redirected")
            return b""
        gzipped = b"gzip" in (request.getHeader(b"accept-encoding") or b"")
        if request.path.startswith(b"/v1/echo-gzip-stream"):
            request.setHeader(b"content-type", b"text/event-stream")
            pieces = list(GZIP_STREAM)
            if gzipped:
                request.setHeader(b"content-encoding", b"gzip")
                packer = zlib.compressobj(wbits=16 + zlib.MAX_WBITS)
                pieces = [packer.compress(event) + packer.flush(zlib.Z_SYNC_FLUSH)
                          for event in pieces]
                pieces[-1] += packer.flush()  # the trailer comes with [DONE]

            def write_gzipped() -> None:
                if not request._disconnected:
                    request.write(pieces.pop(0))
                    if pieces:
                        reactor.callLater(0.02, write_gzipped)
                    else:
                        request.finish()

            write_gzipped()
            return NOT_DONE_YET
        if request.path.startswith(b"/v1/echo-stream"):
            request.setHeader(b"content-type", b"application/octet-stream")
            request.setHeader(b"x-upstream", b"yes")
            chunks = [b"part%d;" % index for index in range(4)]

            def write_next() -> None:
                if request._disconnected:
                    return
                request.write(chunks.pop(0))
                if chunks:
                    reactor.callLater(0.05, write_next)
                else:
                    request.finish()

            write_next()
            return NOT_DONE_YET
        request.setHeader(b"x-upstream", b"yes")
        answer = self._json(request, {
            "method": request.method.decode(), "uri": request.uri.decode(),
            "body_sha256": hashlib.sha256(body).hexdigest(), "body_size": len(body),
            "usage": ECHO_USAGE})
        if request.path.startswith(b"/v1/echo-gzip") and gzipped:
            request.setHeader(b"content-encoding", b"gzip")
            return gzip.compress(answer)
        return answer
