"""Fast fake OpenAI chat-completions server for benchmarking txgateway.

The fake must never be the bottleneck, so it is a bare ``asyncio.Protocol``
(no web framework, uvloop when available) answering every request with
pre-built bytes: the only per-request work is finding the end of the head,
reading Content-Length and a couple of ``bytes.find`` calls on the body.

``GET /stats`` answers ``{"completions": N}``, the chat completions answered
so far, so the harness can check that a gateway really forwarded its load.

Usage::

    python bench/fake_upstream.py --port 9000 [--chunks 20] [--chunk-delay 0]
"""

import argparse
import asyncio
import json

COMPLETION_PATH = b"/v1/chat/completions"
MODEL = "bench-model"
CREATED = 1_700_000_000
REPLY_WORDS = ["The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog."]
MAX_HEAD = 64 * 1024


def completion_body() -> bytes:
    """Canned non-streaming ``chat.completion`` (~600 bytes, like a real short answer)."""
    body = {
        "id": "chatcmpl-bench0000000000000000000000000",
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "The quick brown fox jumps over the lazy dog. "
                    "A canned answer from the benchmark upstream.",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_bench000",
    }
    return json.dumps(body, separators=(",", ":")).encode()


def usage() -> dict:
    """Token usage block shared by the JSON answer and the final stream chunk."""
    return {
        "prompt_tokens": 212,
        "completion_tokens": 31,
        "total_tokens": 243,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def stream_events(chunks: int, include_usage: bool) -> list[bytes]:
    """SSE events of one answer: role chunk, content chunks, stop chunk, [usage], [DONE]."""
    events = []
    for i in range(chunks):
        if i == 0:
            delta, finish = {"role": "assistant", "content": ""}, None
        elif i == chunks - 1:
            delta, finish = {}, "stop"
        else:
            delta, finish = {"content": REPLY_WORDS[(i - 1) % len(REPLY_WORDS)]}, None
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        events.append(chunk_event([choice]))
    if include_usage:
        events.append(chunk_event([], usage()))
    events.append(b"data: [DONE]\n\n")
    return events


def chunk_event(choices: list, usage_block: dict | None = None) -> bytes:
    """One ``data: {chat.completion.chunk}`` SSE event."""
    chunk = {
        "id": "chatcmpl-bench0000000000000000000000000",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": MODEL,
        "system_fingerprint": "fp_bench000",
        "choices": choices,
        "usage": usage_block,
    }
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def http_chunk(data: bytes) -> bytes:
    """Frame ``data`` for chunked transfer encoding."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def fixed_response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    """Complete HTTP/1.1 response with Content-Length."""
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)
LAST_CHUNK = b"0\r\n\r\n"
HEALTH = fixed_response(b"200 OK", b"application/json", b'{"status":"ok"}')
NOT_FOUND = fixed_response(b"404 Not Found", b"application/json", b'{"error":"not found"}')
BAD_REQUEST = fixed_response(b"400 Bad Request", b"application/json", b'{"error":"bad request"}')


class Answers:
    """All response bytes, built once at start-up so serving is a lookup and a write.

    Also counts the completions served (shared by every connection): one integer
    increment per request is the fake's only bookkeeping.
    """

    def __init__(self, chunks: int, chunk_delay: float):
        self.delay = chunk_delay
        self.completions = 0
        self.completion = fixed_response(b"200 OK", b"application/json", completion_body())
        self.events = {usage: stream_events(chunks, usage) for usage in (False, True)}
        self.stream = {
            usage: STREAM_HEAD + b"".join(map(http_chunk, events)) + LAST_CHUNK
            for usage, events in self.events.items()
        }


def wants_stream(body: bytes) -> bool:
    """Cheap check for ``"stream": true`` without parsing JSON."""
    return b'"stream": true' in body or b'"stream":true' in body


def wants_usage(body: bytes) -> bool:
    """Cheap check for ``"include_usage": true`` without parsing JSON."""
    return b'"include_usage": true' in body or b'"include_usage":true' in body


class UpstreamProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive server connection; handles partial reads and pipelining.

    Requests are answered strictly in order: while a delayed stream is being
    written, further pipelined requests stay in the buffer until it ends.
    """

    def __init__(self, answers: Answers):
        self.answers = answers
        self.buffer = b""
        self.busy = False
        self.closing = False
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        self.transport = None

    def data_received(self, data):
        self.buffer += data
        if not self.busy:
            self.process()

    def process(self):
        """Answer every complete request in the buffer."""
        while not (self.transport is None or self.busy or self.closing):
            request = self.next_request()
            if request is None:
                return
            self.respond(*request)

    def next_request(self):
        """Pop one complete request (request line, lower-cased head, body) or return None."""
        buf = self.buffer
        head_end = buf.find(b"\r\n\r\n")
        if head_end < 0:
            if len(buf) > MAX_HEAD:
                self.fail()
            return None
        head = buf[:head_end].lower()
        length = content_length(head)
        if length is None:
            self.fail()
            return None
        end = head_end + 4 + length
        if len(buf) < end:
            return None
        self.buffer = buf[end:]
        line_end = head.find(b"\r\n")
        request_line = buf[: line_end if line_end >= 0 else head_end]
        return request_line, head, buf[head_end + 4 : end]

    def respond(self, request_line: bytes, head: bytes, body: bytes):
        parts = request_line.split(b" ")
        if len(parts) != 3:
            self.fail()
            return
        method, path, _ = parts
        if method == b"POST" and path == COMPLETION_PATH:
            self.complete(body)
        elif method == b"GET" and path in (b"/health", b"/v1/health"):
            self.transport.write(HEALTH)
        elif method == b"GET" and path == b"/stats":
            stats = b'{"completions":%d}' % self.answers.completions
            self.transport.write(fixed_response(b"200 OK", b"application/json", stats))
        else:
            self.transport.write(NOT_FOUND)
        if b"connection: close" in head:
            self.closing = True
            if not self.busy:
                self.transport.close()

    def complete(self, body: bytes):
        answers = self.answers
        answers.completions += 1
        if not wants_stream(body):
            self.transport.write(answers.completion)
        elif answers.delay <= 0:
            self.transport.write(answers.stream[wants_usage(body)])
        else:
            self.busy = True
            asyncio.ensure_future(self.slow_stream(answers.events[wants_usage(body)]))

    async def slow_stream(self, events: list[bytes]):
        """Write one SSE event per ``--chunk-delay`` seconds, then resume the pipeline."""
        self.transport.write(STREAM_HEAD)
        for event in events:
            await asyncio.sleep(self.answers.delay)
            if self.transport is None:
                return
            self.transport.write(http_chunk(event))
        self.transport.write(LAST_CHUNK)
        self.busy = False
        if self.closing:
            self.transport.close()
        else:
            self.process()

    def fail(self):
        self.transport.write(BAD_REQUEST)
        self.transport.close()
        self.closing = True


def content_length(head: bytes) -> int | None:
    """Content-Length from a lower-cased head; 0 when absent, None when malformed."""
    start = head.find(b"\r\ncontent-length:")
    if start < 0:
        return 0
    start += len(b"\r\ncontent-length:")
    end = head.find(b"\r\n", start)
    try:
        return int(head[start : end if end >= 0 else len(head)])
    except ValueError:
        return None


def install_fast_loop() -> str:
    """Use uvloop when installed (optional); returns the loop name for the ready line."""
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    uvloop.install()
    return "uvloop"


async def serve(host: str, port: int, answers: Answers, loop_name: str):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: UpstreamProtocol(answers), host, port, backlog=1024)
    actual_port = server.sockets[0].getsockname()[1]
    print(f"fake_upstream ready on http://{host}:{actual_port} ({loop_name})", flush=True)
    async with server:
        await server.serve_forever()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--chunks", type=int, default=20, help="chunk events per stream")
    parser.add_argument("--chunk-delay", type=float, default=0.0, help="seconds between events")
    args = parser.parse_args(argv)
    if args.chunks < 2:
        parser.error("--chunks must be at least 2 (role chunk and stop chunk)")
    return args


def main(argv=None):
    args = parse_args(argv)
    loop_name = install_fast_loop()
    try:
        asyncio.run(serve(args.host, args.port, Answers(args.chunks, args.chunk_delay), loop_name))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
