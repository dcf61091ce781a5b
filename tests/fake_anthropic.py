"""
A fake Anthropic server on a loopback port, speaking the Messages wire format exactly: JSON
answers, and SSE streams with ``event:`` lines, ``ping`` events, cumulative ``message_delta``
usage, ``tool_use`` blocks streamed as ``input_json_delta`` fragments, thinking blocks and
``error`` events.

What it does is chosen by the request's model name, as in `tests.fake_openai`, whose faults
it shares: a cut stream, a slow one that drips until the client leaves, and a big one faster
than the client reads.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet import reactor
from twisted.web.server import NOT_DONE_YET

from tests.fake_openai import BigStream, Dripper, FakeUpstream
from txgateway.web.site import GatewaySite

TEXT = ["Hel", "lo", " there", "!"]
THINKING = ["Let me ", "think."]
TOOL_INPUT_FRAGMENTS = ["", '{"ci', 'ty": "Pa', 'ris"}']
#: message_start's usage; message_delta repeats the input side (cumulative) with the output.
START_USAGE = {"input_tokens": 20, "cache_creation_input_tokens": 5,
               "cache_read_input_tokens": 7, "output_tokens": 1}
FINAL_USAGE = {**START_USAGE, "output_tokens": 9}
STOP_REASONS = {"max-tokens": "max_tokens", "stop-sequence": "stop_sequence",
                "refusal": "refusal"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
               403: "permission_error", 404: "not_found_error", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}


def sse(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _behaviour(body: dict[str, Any]) -> str:
    """The model name less the ``claude-`` the gateway's test routes match on."""
    return body["model"].removeprefix("claude-")


class FakeAnthropic(FakeUpstream):
    def render_POST(self, request: Any) -> Any:
        body = self.received(request)
        request.setHeader(b"request-id", b"req_fake")
        model = _behaviour(body)
        if model.startswith("error-"):
            return self._error(request, int(model.split("-")[1]))
        request.setHeader(b"content-type", b"application/json")
        if request.path == b"/v1/messages/count_tokens":
            return orjson.dumps({"input_tokens": 1000 + len(body["messages"])})
        blocks = self._blocks(body)
        if body.get("stream"):
            return self._stream(request, body, blocks)
        return orjson.dumps(self._message(body, [block for block, _ in blocks],
                                          STOP_REASONS.get(model, self._stop(body)),
                                          FINAL_USAGE))

    def _error(self, request: Any, status: int) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        if status == 429:
            request.setHeader(b"retry-after", b"7")
        return orjson.dumps({"type": "error", "error": {
            "type": ERROR_TYPES[status], "message": f"fake anthropic error {status}"},
            "request_id": "req_fake"})

    @staticmethod
    def _stop(body: dict[str, Any]) -> str:
        return "tool_use" if body.get("tools") else "end_turn"

    def _blocks(self, body: dict[str, Any]) -> list[tuple[dict[str, Any], list[dict]]]:
        """The answer's blocks, each with the deltas that stream it."""
        blocks = []
        if body.get("thinking"):
            blocks.append(({"type": "thinking", "thinking": "".join(THINKING),
                            "signature": "sig-fake"},
                           [{"type": "thinking_delta", "thinking": t} for t in THINKING]
                           + [{"type": "signature_delta", "signature": "sig-fake"}]))
        blocks.append(({"type": "text", "text": "".join(TEXT)},
                       [{"type": "text_delta", "text": t} for t in TEXT]))
        for tool in body.get("tools") or []:
            blocks.append(({"type": "tool_use", "id": "toolu_fake_" + tool["name"],
                            "name": tool["name"], "input": {"city": "Paris"}},
                           [{"type": "input_json_delta", "partial_json": part}
                            for part in TOOL_INPUT_FRAGMENTS]))
        return blocks

    def _message(self, body: dict[str, Any], content: list[dict[str, Any]],
                 stop_reason: str | None, usage: dict[str, Any]) -> dict[str, Any]:
        return {"id": "msg_fake123", "type": "message", "role": "assistant",
                "model": body["model"], "content": content, "stop_reason": stop_reason,
                "stop_sequence": "END" if stop_reason == "stop_sequence" else None,
                "usage": usage}

    def _stream(self, request: Any, body: dict[str, Any],
                blocks: list[tuple[dict[str, Any], list[dict]]]) -> Any:
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        model = _behaviour(body)
        events = [sse("message_start", {"type": "message_start", "message": self._message(
            body, [], None, START_USAGE)}), sse("ping", {"type": "ping"})]
        for index, (block, deltas) in enumerate(blocks):
            empty = dict(block)
            for key, blank in (("text", ""), ("thinking", ""), ("signature", ""),
                               ("input", {})):
                if key in empty:
                    empty[key] = blank
            events.append(sse("content_block_start", {
                "type": "content_block_start", "index": index, "content_block": empty}))
            events += [sse("content_block_delta", {"type": "content_block_delta",
                                                    "index": index, "delta": delta})
                       for delta in deltas]
            events.append(sse("content_block_stop", {"type": "content_block_stop",
                                                     "index": index}))
        if model == "stream-error":
            events = events[:4] + [sse("error", {"type": "error", "error": {
                "type": "overloaded_error", "message": "Overloaded"}})]
        else:
            stop = STOP_REASONS.get(model, self._stop(body))
            events += [
                sse("message_delta", {"type": "message_delta", "delta": {
                    "stop_reason": stop,
                    "stop_sequence": "END" if stop == "stop_sequence" else None},
                    "usage": FINAL_USAGE}),
                sse("message_stop", {"type": "message_stop"}),
            ]
        if model == "cut-stream":
            request.write(b"".join(events[:4]))
            reactor.callLater(0.05, request.channel.transport.abortConnection)
            return NOT_DONE_YET
        # Up to events[2] the text block's start, events[3] its first delta, and after the
        # last delta its stop, message_delta and message_stop.
        if model == "slow-stream":
            request.write(b"".join(events[:3]))
            Dripper(request, events[3]).start()
            return NOT_DONE_YET
        if model == "big-stream":
            request.write(b"".join(events[:3]))
            request.registerProducer(BigStream(self, request, events[3],
                                               b"".join(events[-3:])), True)
            return NOT_DONE_YET
        for event in events:
            request.write(event)
        request.finish()
        return NOT_DONE_YET


async def start_fake_anthropic() -> tuple[FakeAnthropic, Any, GatewaySite]:
    """The fake, its port and its site (whose ``close_connections`` tests call at the end)."""
    fake = FakeAnthropic()
    site = GatewaySite(fake)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    return fake, port, site
