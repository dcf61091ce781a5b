"""
The fake OpenAI server's Files and Batch APIs, in their real wire formats, at OpenAI's paths
(``/v1/files``...) and Azure's (``/openai/v1/files``...): files kept in memory (uploads parsed
with the standard library's email parser, independent of the gateway's), batches that move a
step each time they are polled (validating, in_progress, completed, which writes the output
file: one chat completion with its usage per input line, or a 400 for models named
``error-...``), cancel, and 404s for unknown ids.
"""

from __future__ import annotations

import re
import time
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

import orjson
from twisted.internet import reactor
from twisted.web.server import NOT_DONE_YET

#: The usage of every request a batch runs.
BATCH_USAGE = {"prompt_tokens": 20, "completion_tokens": 6, "total_tokens": 26,
               "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
               "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
#: File content comes in pieces a moment apart: this large, or an eighth of a large file.
CONTENT_PIECE = 100
_PATH = re.compile(rb"^(?:/openai)?/v1/(files|batches)(?:/([^/]+))?(?:/([^/]+))?$")
_NEXT = {"validating": "in_progress", "in_progress": "completed", "cancelling": "cancelled"}


class BatchFakes:
    """Mixed into the fake OpenAI server, first: the files and batches paths."""

    def __init__(self) -> None:
        super().__init__()
        #: Files by id: (file object, content).
        self.files: dict[str, tuple[dict[str, Any], bytes]] = {}
        #: Batches by id.
        self.batches: dict[str, dict[str, Any]] = {}
        #: Each upload: (path, headers by lower-case name, text fields, filename, content).
        self.uploads: list[tuple[bytes, dict[bytes, list[bytes]], dict[str, str], str,
                                 bytes]] = []
        #: Every files or batches call: (method, path).
        self.object_calls: list[tuple[bytes, bytes]] = []

    def render(self, request: Any) -> Any:
        matched = _PATH.match(request.path)
        if matched is None:
            return super().render(request)  # type: ignore[misc]
        self.object_calls.append((request.method, request.path))
        collection, object_id, action = matched.groups()
        request.setHeader(b"content-type", b"application/json")
        key = (collection, request.method, object_id is not None, action)
        handler = {
            (b"files", b"POST", False, None): self._upload,
            (b"files", b"GET", True, None): self._file,
            (b"files", b"DELETE", True, None): self._delete_file,
            (b"files", b"GET", True, b"content"): self._content,
            (b"batches", b"POST", False, None): self._create_batch,
            (b"batches", b"GET", True, None): self._poll_batch,
            (b"batches", b"POST", True, b"cancel"): self._cancel_batch,
        }.get(key)
        if handler is None:
            return _error(request, 404, "Invalid URL")
        if object_id is None:
            return handler(request)
        return handler(request, object_id.decode())

    def _upload(self, request: Any) -> bytes:
        content_type = request.getHeader(b"content-type") or b""
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type + b"\r\n\r\n" + request.content.read())
        fields: dict[str, str] = {}
        filename, content = None, b""
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if part.get_filename() is None:
                fields[name] = part.get_payload(decode=True).decode()
            elif name == "file":
                filename, content = part.get_filename(), part.get_payload(decode=True)
        if filename is None or "purpose" not in fields:
            return _error(request, 400, "'file' and 'purpose' are required")
        headers = {name.lower(): values
                   for name, values in request.requestHeaders.getAllRawHeaders()}
        self.uploads.append((request.path, headers, fields, filename, content))
        return orjson.dumps(self._keep(filename, fields["purpose"], content))

    def _keep(self, filename: str, purpose: str, content: bytes) -> dict[str, Any]:
        made = {"id": f"file-fake{len(self.files)}", "object": "file", "bytes": len(content),
                "created_at": int(time.time()), "filename": filename, "purpose": purpose,
                "status": "processed", "expires_at": None, "status_details": None}
        self.files[made["id"]] = (made, content)
        return made

    def _file(self, request: Any, file_id: str) -> bytes:
        if file_id not in self.files:
            return _error(request, 404, f"No such File object: {file_id}")
        return orjson.dumps(self.files[file_id][0])

    def _delete_file(self, request: Any, file_id: str) -> bytes:
        if self.files.pop(file_id, None) is None:
            return _error(request, 404, f"No such File object: {file_id}")
        return orjson.dumps({"id": file_id, "object": "file", "deleted": True})

    def _content(self, request: Any, file_id: str) -> Any:
        if file_id not in self.files:
            return _error(request, 404, f"No such File object: {file_id}")
        content = self.files[file_id][1]
        request.setHeader(b"content-type", b"application/octet-stream")
        size = max(CONTENT_PIECE, len(content) // 8 + 1)
        pieces = [content[start:start + size] for start in range(0, len(content), size)]

        def write_next() -> None:
            if request._disconnected:
                return
            if pieces:
                request.write(pieces.pop(0))
                reactor.callLater(0.001, write_next)
            else:
                request.finish()

        write_next()
        return NOT_DONE_YET

    def _create_batch(self, request: Any) -> bytes:
        asked = orjson.loads(request.content.read())
        held = self.files.get(asked.get("input_file_id", ""))
        if held is None or held[0]["purpose"] != "batch":
            return _error(request, 400, "the input file must be a file of purpose batch")
        lines = [orjson.loads(line) for line in held[1].splitlines() if line.strip()]
        batch = {"id": f"batch_fake{len(self.batches)}", "object": "batch",
                 "endpoint": asked["endpoint"], "errors": None,
                 "input_file_id": asked["input_file_id"],
                 "completion_window": asked["completion_window"], "status": "validating",
                 "output_file_id": None, "error_file_id": None,
                 "created_at": int(time.time()), "in_progress_at": None, "expires_at": None,
                 "finalizing_at": None, "completed_at": None, "failed_at": None,
                 "expired_at": None, "cancelling_at": None, "cancelled_at": None,
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                 "metadata": asked.get("metadata")}
        self.batches[batch["id"]] = batch
        return orjson.dumps(batch)

    def _poll_batch(self, request: Any, batch_id: str) -> bytes:
        batch = self.batches.get(batch_id)
        if batch is None:
            return _error(request, 404, f"No such Batch object: {batch_id}")
        following = _NEXT.get(batch["status"])
        if following is not None:
            batch["status"] = following
            batch[following + "_at"] = int(time.time())
            if following == "completed":
                self._write_output(batch)
        return orjson.dumps(batch)

    def _write_output(self, batch: dict[str, Any]) -> None:
        inputs = self.files[batch["input_file_id"]][1]
        out = []
        for number, raw in enumerate(line for line in inputs.splitlines() if line.strip()):
            line = orjson.loads(raw)
            model = line["body"]["model"]
            if model.startswith("error-"):
                response = {"status_code": 400, "request_id": f"req_{number}", "body": {
                    "error": {"message": "fake error", "type": "invalid_request_error",
                              "param": None, "code": None}}}
            else:
                response = {"status_code": 200, "request_id": f"req_{number}", "body": {
                    "id": f"chatcmpl-batch{number}", "object": "chat.completion",
                    "created": int(time.time()), "model": model, "choices": [{
                        "index": 0, "finish_reason": "stop", "logprobs": None,
                        "message": {"role": "assistant", "content": "done"}}],
                    "usage": BATCH_USAGE}}
            out.append(orjson.dumps({"id": f"batch_req_{number}",
                                     "custom_id": line["custom_id"], "response": response,
                                     "error": None}))
        made = self._keep(f"{batch['id']}_output.jsonl", "batch_output",
                          b"\n".join(out) + b"\n")
        batch["output_file_id"] = made["id"]
        batch["request_counts"]["completed"] = len(out)

    def _cancel_batch(self, request: Any, batch_id: str) -> bytes:
        batch = self.batches.get(batch_id)
        if batch is None:
            return _error(request, 404, f"No such Batch object: {batch_id}")
        if batch["status"] in ("validating", "in_progress"):
            batch["status"] = "cancelling"
            batch["cancelling_at"] = int(time.time())
        return orjson.dumps(batch)


def _error(request: Any, status: int, message: str) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return orjson.dumps({"error": {"message": message, "type": "invalid_request_error",
                                   "param": None, "code": None}})
