"""
A fake OpenAI server on a loopback port, speaking the real chat completions wire format.

What it does is chosen by the request's model name, so one server plays every upstream a
test needs: well-behaved answers (plain, streamed, tool calls, ``n`` choices), error statuses,
and the faults a gateway must survive (no answer, a stalled body, a cut stream, a stream
that never ends, a stream faster than the client reads).  Reached on Azure's ``/openai/...``
paths, it adds Azure's content filter results to its answers.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from tests.fake_openai_batch import BatchFakes
from tests.fake_openai_responses import ResponsesFakes
from tests.fake_openai_rest import RestFakes
from txgateway.web.site import GatewaySite

CONTENT = ["Hel", "lo", " there", "!"]
TOOL_ARGUMENT_FRAGMENTS = ['{"ci', 'ty": "Pa', 'ris"}']
USAGE = {
    "prompt_tokens": 11,
    "completion_tokens": 4,
    "total_tokens": 15,
    "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                  "accepted_prediction_tokens": 0,
                                  "rejected_prediction_tokens": 0},
}
CONTENT_FILTER_RESULTS = {category: {"filtered": False, "severity": "safe"}
                          for category in ("hate", "self_harm", "sexual", "violence")}
PROMPT_FILTER_RESULTS = [{"prompt_index": 0, "content_filter_results": CONTENT_FILTER_RESULTS}]


class FakeUpstream(Resource):
    """What every fake records: the requests, the clients that left, the big stream's pace."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        #: Every request received: (path, headers as a dict of lists, parsed JSON body).
        self.requests: list[tuple[bytes, dict[bytes, list[bytes]], Any]] = []
        #: The query arguments of each request, in the same order.
        self.queries: list[dict[bytes, list[bytes]]] = []
        #: Models of the requests whose client left before the answer was complete.
        self.dropped: list[str] = []
        self._drop_waiters: list[Deferred[str]] = []
        #: Bytes written by the producer-driven big stream, and how often it was paused.
        self.big_stream_bytes = 0
        self.big_stream_pauses = 0

    def received(self, request: Any) -> dict[str, Any]:
        """The request's body, recorded, with its client's leaving watched for."""
        body = orjson.loads(request.content.read())
        self.requests.append((request.path, dict(request.requestHeaders.getAllRawHeaders()),
                              body))
        self.queries.append(request.args)
        request.notifyFinish().addErrback(lambda _: self._dropped(body["model"]))
        return body

    def wait_for_disconnect(self) -> Deferred[str]:
        """Fires with the model of the first dropped request, at once if it already was."""
        waiter: Deferred[str] = Deferred()
        if self.dropped:
            waiter.callback(self.dropped[0])
        else:
            self._drop_waiters.append(waiter)
        return waiter

    def _dropped(self, model: str) -> None:
        self.dropped.append(model)
        waiters, self._drop_waiters = self._drop_waiters, []
        for waiter in waiters:
            waiter.callback(model)


class FakeOpenAI(BatchFakes, ResponsesFakes, RestFakes, FakeUpstream):
    """Chat completions here; the other REST APIs in `tests.fake_openai_rest`."""

    def render_POST(self, request: Any) -> Any:
        body = self.received(request)
        model = body["model"]
        if model.startswith("error-"):
            return self._error(request, int(model.split("-")[1]))
        if model == "busy-once" and [b["model"] for _, _, b in self.requests] == [model]:
            request.setHeader(b"retry-after", b"1")  # busy at its first call only
            return self._error(request, 503)
        if model == "html-502":
            request.setResponseCode(502)
            request.setHeader(b"content-type", b"text/html")
            return b"<html><body>Bad gateway</body></html>"
        if model == "cookie-setter":
            request.addCookie(b"session", b"tenant-a-secret")
        if model == "slow-headers":
            return NOT_DONE_YET
        if model == "stall-body":
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", b"1000")
            request.write(b'{"id": "chatcmpl-stall", "object": ')
            return NOT_DONE_YET
        if body.get("stream"):
            return self._stream(request, body)
        return self._complete(request, body)

    def _error(self, request: Any, status: int) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        if status == 429:
            request.setHeader(b"retry-after", b"7")
        kind = {400: "invalid_request_error", 401: "authentication_error",
                429: "rate_limit_error"}.get(status, "server_error")
        return orjson.dumps({"error": {"message": f"fake upstream error {status}", "type": kind,
                                       "param": None, "code": f"fake_{status}"}})

    def _envelope(self, body: dict[str, Any], kind: str) -> dict[str, Any]:
        return {"id": "chatcmpl-fake123", "object": kind, "created": int(time.time()),
                "model": body["model"], "system_fingerprint": "fp_fake"}

    def _complete(self, request: Any, body: dict[str, Any]) -> bytes:
        if body.get("tools"):
            message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [{
                "id": "call_fake1", "type": "function",
                "function": {"name": body["tools"][0]["function"]["name"],
                             "arguments": "".join(TOOL_ARGUMENT_FRAGMENTS)}}]}
            finish = "tool_calls"
        else:
            message = {"role": "assistant", "content": "".join(CONTENT), "refusal": None}
            finish = "stop"
        answer = {**self._envelope(body, "chat.completion"), "choices": [
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
            for index in range(body.get("n") or 1)
        ], "usage": USAGE}
        if _azure(request):
            answer["prompt_filter_results"] = PROMPT_FILTER_RESULTS
            for choice in answer["choices"]:
                choice["content_filter_results"] = CONTENT_FILTER_RESULTS
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps(answer)

    def _chunks(self, body: dict[str, Any], azure: bool) -> list[bytes]:
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        extra = {"usage": None} if include_usage else {}
        filtered = {"content_filter_results": CONTENT_FILTER_RESULTS} if azure else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            event = {**self._envelope(body, "chat.completion.chunk"), **extra, "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish,
                 **filtered}]}
            return b"data: " + orjson.dumps(event) + b"\n\n"

        chunks = [chunk({"role": "assistant", "content": ""})]
        if azure:  # Azure opens its streams with the prompt's filter results
            prompt = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
                      "prompt_filter_results": PROMPT_FILTER_RESULTS}
            chunks.insert(0, b"data: " + orjson.dumps(prompt) + b"\n\n")
        if body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            chunks.append(chunk({"tool_calls": [{"index": 0, "id": "call_fake1",
                                                 "type": "function", "function": {
                                                     "name": name, "arguments": ""}}]}))
            chunks += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": part}}]})
                       for part in TOOL_ARGUMENT_FRAGMENTS]
            chunks.append(chunk({}, "tool_calls"))
        else:
            chunks += [chunk({"content": text}) for text in CONTENT]
            chunks.append(chunk({}, "stop"))
        if include_usage:
            usage = {**self._envelope(body, "chat.completion.chunk"), "choices": [],
                     "usage": USAGE}
            chunks.append(b"data: " + orjson.dumps(usage) + b"\n\n")
        return chunks + [b"data: [DONE]\n\n"]

    def _stream(self, request: Any, body: dict[str, Any]) -> Any:
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        model = body["model"]
        chunks = self._chunks(body, _azure(request))
        if model == "cut-stream":
            request.write(b"".join(chunks[:2]))
            reactor.callLater(0.05, request.channel.transport.abortConnection)
        elif model == "stall-stream":
            request.write(chunks[0])
        elif model == "slow-stream":
            Dripper(request, chunks[0]).start()
        elif model == "big-stream":
            request.registerProducer(BigStream(self, request, chunks[1], chunks[-1]), True)
        else:
            # One write per event, as a real server flushes them.
            for data in chunks:
                request.write(data)
            request.finish()
        return NOT_DONE_YET


def _azure(request: Any) -> bool:
    return request.path.startswith(b"/openai/")


class Dripper:
    """Writes an event every 20 ms until the client leaves."""

    def __init__(self, request: Any, event: bytes) -> None:
        self._request = request
        self._event = event
        self._timer: Any = None
        request.notifyFinish().addErrback(lambda _: self._timer.cancel())

    def start(self) -> None:
        self._request.write(self._event)
        self._timer = reactor.callLater(0.02, self.start)


class BigStream:
    """
    Streams events as fast as the connection takes them, then ``tail``: a push producer that
    counts.
    """

    total = 64 * 1024 * 1024

    def __init__(self, fake: FakeUpstream, request: Any, event: bytes, tail: bytes) -> None:
        self._fake = fake
        self._request = request
        self._event = event * 64
        self._tail = tail
        self._paused = False
        self._stopped = False
        reactor.callLater(0, self.resumeProducing)

    def pauseProducing(self) -> None:
        self._paused = True
        self._fake.big_stream_pauses += 1

    def resumeProducing(self) -> None:
        self._paused = False
        while not self._paused and not self._stopped:
            if self._fake.big_stream_bytes >= self.total:
                self._request.unregisterProducer()
                self._request.write(self._tail)
                self._request.finish()
                return
            self._fake.big_stream_bytes += len(self._event)
            self._request.write(self._event)

    def stopProducing(self) -> None:
        self._stopped = True


async def start_fake_openai() -> tuple[FakeOpenAI, Any, GatewaySite]:
    """The fake, its port and its site (whose ``close_connections`` tests call at the end)."""
    fake = FakeOpenAI()
    site = GatewaySite(fake)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return fake, port, site
