"""
The fake OpenAI server's Responses API: ``POST /v1/responses`` (JSON or the SSE event
sequence), ``/v1/responses/input_tokens`` and ``/compact``, and the stored responses' ``GET``,
``DELETE`` and ``input_items``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from twisted.web.server import NOT_DONE_YET

TEXT = ["Hel", "lo", " there", "!"]
USAGE = {"input_tokens": 21, "input_tokens_details": {"cached_tokens": 5},
         "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 2},
         "total_tokens": 30}
#: What the fake counts for any input, and the content of the compaction items it makes.
INPUT_TOKENS = 123
ENCRYPTED = "gAAAA-fake-opaque-compaction"


def _event(kind: str, sequence: int, **fields: Any) -> bytes:
    data = orjson.dumps({"type": kind, "sequence_number": sequence, **fields})
    return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"


class ResponsesFakes:
    """Mixed into the fake OpenAI server, before the other REST fakes."""

    def __init__(self) -> None:
        super().__init__()
        #: Responses made, by id: (the request body, the response object).
        self.responses: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
        #: Every call on a stored response: (method, path).
        self.stored_calls: list[tuple[bytes, bytes]] = []

    def render(self, request: Any) -> Any:
        path = request.path
        if path.endswith(b"/responses") and request.method == b"POST":
            return self._create(request)
        if path.endswith(b"/responses/input_tokens") and request.method == b"POST":
            self.received(request)  # type: ignore[attr-defined]
            request.setHeader(b"content-type", b"application/json")
            return orjson.dumps({"object": "response.input_tokens",
                                 "input_tokens": INPUT_TOKENS})
        if path.endswith(b"/responses/compact") and request.method == b"POST":
            return self._compact(request)
        if b"/responses/" in path:
            return self._stored(request)
        return super().render(request)  # type: ignore[misc]

    def _create(self, request: Any) -> Any:
        body = self.received(request)  # type: ignore[attr-defined]
        model = body["model"]
        if model.startswith("error-"):
            return self._error(request, int(model.split("-")[1]))  # type: ignore[attr-defined]
        number = len(self.responses)
        response_id = f"resp_fake{number}"
        if body.get("tools"):
            item = {"type": "function_call", "id": f"fc_fake{number}", "call_id": "call_fake1",
                    "name": body["tools"][0]["name"], "arguments": '{"city": "Paris"}',
                    "status": "completed"}
        else:
            item = {"type": "message", "id": f"msg_fake{number}", "status": "completed",
                    "role": "assistant", "content": [
                        {"type": "output_text", "text": "".join(TEXT), "annotations": []}]}
        response = {"id": response_id, "object": "response", "created_at": int(time.time()),
                    "status": "completed", "error": None, "incomplete_details": None,
                    "model": model, "output": [item], "parallel_tool_calls": True,
                    "tool_choice": "auto", "tools": body.get("tools") or [],
                    "previous_response_id": body.get("previous_response_id"),
                    "usage": USAGE}
        self.responses[response_id] = (body, response)
        if not body.get("stream"):
            request.setHeader(b"content-type", b"application/json")
            return orjson.dumps(response)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        started = {**response, "status": "in_progress", "output": [], "usage": None}
        sequence = iter(range(100))
        request.write(_event("response.created", next(sequence), response=started))
        request.write(_event("response.in_progress", next(sequence), response=started))
        request.write(_event("response.output_item.added", next(sequence), output_index=0,
                             item={**item, "status": "in_progress", "content": []}))
        for text in TEXT:
            request.write(_event("response.output_text.delta", next(sequence),
                                 item_id=item["id"], output_index=0, content_index=0,
                                 delta=text, logprobs=[]))
        request.write(_event("response.output_item.done", next(sequence), output_index=0,
                             item=item))
        request.write(_event("response.completed", next(sequence), response=response))
        request.finish()
        return NOT_DONE_YET

    def _compact(self, request: Any) -> bytes:
        """The user messages of the input, then one opaque compaction item."""
        body = self.received(request)  # type: ignore[attr-defined]
        inputs = body.get("input") or []
        if isinstance(inputs, str):
            inputs = [{"role": "user", "content": inputs}]
        users = [{"type": "message", "id": f"msg_user{index}", "role": "user",
                  "status": "completed", "content": [{"type": "input_text", "text": item[
                      "content"]}] if isinstance(item["content"], str) else item["content"]}
                 for index, item in enumerate(inputs) if item.get("role") == "user"]
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps({
            "id": "resp_compact1", "object": "response.compaction",
            "created_at": int(time.time()), "usage": USAGE,
            "output": [*users, {"type": "compaction", "id": "cmp_fake1",
                                "encrypted_content": ENCRYPTED}]})

    def _stored(self, request: Any) -> bytes:
        self.stored_calls.append((request.method, request.path))
        request.setHeader(b"content-type", b"application/json")
        parts = request.path.split(b"/responses/", 1)[1].split(b"/")
        found = self.responses.get(parts[0].decode())
        if found is None:
            request.setResponseCode(404)
            return orjson.dumps({"error": {"message": "No response found", "type":
                                           "invalid_request_error", "param": None,
                                           "code": None}})
        body, response = found
        if request.method == b"DELETE":
            del self.responses[parts[0].decode()]
            return orjson.dumps({"id": response["id"], "object": "response", "deleted": True})
        if parts[1:] == [b"input_items"]:
            items = [{"type": "message", "id": "msg_in1", "role": "user", "status":
                      "completed", "content": [{"type": "input_text", "text": body["input"]}]}]
            return orjson.dumps({"object": "list", "data": items, "first_id": "msg_in1",
                                 "last_id": "msg_in1", "has_more": False})
        return orjson.dumps(response)
