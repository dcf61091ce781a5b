"""
Hypothesis strategies for malformed HTTP requests and WebSocket traffic, written to a gateway
as raw bytes on a loopback socket, and the checks every answer must pass: a 4xx in the caller's
dialect (or a close code), never a 5xx, never a hang.

Each strategy draws a whole request as bytes with whether it is complete: a request whose
declared body is longer than what is sent may be waited on (that is the protocol), any other
must be answered.
"""

from __future__ import annotations

import re
import socket
import struct
from typing import Any

import orjson
from hypothesis import strategies as st

from tests.raw_http import RawAnswer, parse_answer, send_raw, whole

#: The keys the fuzzed gateway knows (`tests.test_keys.KEYS_CONFIG`).
GOOD_KEY = b"sk-team-0123456789"

PATHS = [b"/v1/chat/completions", b"/v1/completions", b"/v1/embeddings", b"/v1/responses",
         b"/v1/messages", b"/anthropic/v1/messages", b"/v1/messages/count_tokens",
         b"/v1/models", b"/v1/models/demo", b"/v1/files", b"/v1/batches", b"/v1/rerank",
         b"/v1/images/generations", b"/v1/images/edits", b"/v1/audio/transcriptions",
         b"/v1/audio/speech", b"/v1/realtime/client_secrets", b"/v1/conversations",
         b"/p/fake/echo", b"/admin/keys", b"/health", b"/metrics", b"/openapi.json", b"/"]
MULTIPART_PATHS = [b"/v1/audio/transcriptions", b"/v1/audio/translations", b"/v1/files",
                   b"/v1/images/edits"]
METHODS = [b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"OPTIONS", b"TRACE",
           b"CONNECT", b"BREW", b"get", b"P\x00ST", b""]
CHAT = orjson.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}]})

_text = st.binary(max_size=40)
_token = st.sampled_from([b"a", b"x-foo", b"content-type", b"Host", b"Expect",
                          b"Transfer-Encoding", b"Content-Length", b"authorization",
                          b"x-api-key", b"Connection", b"Upgrade", b"\x00", b"bad name",
                          b"\xff\xfe", b"x" * 300])
_content_lengths = st.sampled_from([b"-1", b"abc", b"1e3", b" 5", b"5, 6", b"0x10", b"+5",
                                    b"99999999999999999999999", b"", b"\t3", b"3 ", b"07"])
_authorizations = st.one_of(
    st.sampled_from([b"Bearer", b"Bearer ", b"Basic Zm9vOmJhcg==", b"bearer " + GOOD_KEY,
                     b"Bearer " + GOOD_KEY + b"\x00", b"Bearer \xff\xfe",
                     b"Bearer " + b"k" * 20000, b"Bearer ek_" + b"x" * 40,
                     b"Bearer " + GOOD_KEY + b" " + GOOD_KEY, b"Bearer sk-\r x"]),
    _text.map(lambda value: b"Bearer " + value))


def _request(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]],
             body: bytes) -> bytes:
    lines = b"".join(b"%s: %s\r\n" % header for header in headers)
    return b"%s %s HTTP/1.1\r\nHost: gw\r\n%s\r\n%s" % (method, target, lines, body)


def _chunked(body: bytes, mangle: int) -> bytes:
    """``body`` chunked, with one of a few abuses."""
    if mangle == 0:
        return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    if mangle == 1:  # a size that is not hex
        return b"zz\r\n%s\r\n0\r\n\r\n" % body
    if mangle == 2:  # chunk extensions and a trailer
        return b"%x;name=value;x\r\n%s\r\n0\r\nx-trailer: 1\r\n\r\n" % (len(body), body)
    if mangle == 3:  # the data longer than its size says
        return b"1\r\n%s\r\n0\r\n\r\n" % body
    if mangle == 4:  # a size past any limit
        return b"ffffffffffffffffff\r\n%s\r\n0\r\n\r\n" % body
    if mangle == 5:  # a negative size
        return b"-5\r\n%s\r\n0\r\n\r\n" % body
    if mangle == 6:  # bare LF line ends
        return b"%x\n%s\n0\n\n" % (len(body), body)
    return b"%x\r\n%s0\r\n\r\n" % (len(body), body)  # the CRLF after the data is missing


@st.composite
def header_requests(draw: Any) -> tuple[bytes, bool]:
    """A request with odd framing or headers; whether it is complete."""
    method = draw(st.sampled_from(METHODS[:4]))
    path = draw(st.sampled_from(PATHS))
    body = draw(st.sampled_from([CHAT, b"", b"{", b"x" * 70000]))
    headers: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
    complete = True
    framing = draw(st.integers(0, 5))
    if framing == 0:  # an odd Content-Length
        value = draw(_content_lengths)
        headers.append((b"Content-Length", value))
        if value.strip().isdigit() and int(value) > len(body):
            complete = False
    elif framing == 1:  # two Content-Lengths that disagree, or agree
        headers += [(b"Content-Length", b"%d" % len(body)),
                    (b"Content-Length", b"%d" % draw(st.sampled_from([0, len(body), 1])))]
    elif framing == 2:  # chunked, abused
        headers.append((b"Transfer-Encoding", draw(st.sampled_from(
            [b"chunked", b"Chunked", b"chunked, identity", b"gzip, chunked", b"xchunked",
             b"chunked\x00"]))))
        if draw(st.booleans()):
            headers.append((b"Content-Length", b"%d" % len(body)))
        body = _chunked(body, draw(st.integers(0, 7)))
        complete = False  # a chunked body the server does not take as ended may be awaited
    elif framing == 3:  # a huge header
        headers += [(b"Content-Length", b"%d" % len(body)),
                    (draw(_token), b"v" * draw(st.sampled_from([8000, 70000, 300000])))]
    elif framing == 4:  # a header repeated many times
        headers.append((b"Content-Length", b"%d" % len(body)))
        headers += [(draw(_token), draw(_text))] * draw(st.sampled_from([100, 1000, 5000]))
    else:
        headers.append((b"Content-Length", b"%d" % len(body)))
    for _ in range(draw(st.integers(0, 3))):
        headers.insert(draw(st.integers(0, len(headers))), (draw(_token), draw(_text)))
    headers.append((draw(st.sampled_from([b"Authorization", b"x-api-key", b"api-key"])),
                    draw(_authorizations)))
    headers.append((b"Connection", b"close"))
    if any(name.lower() in (b"expect", b"transfer-encoding", b"content-length")
           for name, _ in headers[-5:-1]):
        complete = False  # a drawn header may have changed the framing
    return _request(method, path, headers, body), complete


_segments = st.one_of(
    st.sampled_from([b"..", b".", b"%2e%2e", b"%2F", b"%00", b"%", b"%zz", b"%ff%fe",
                     b"\xc3\xa9", b"\xff", b"~", b"a;b", b"@", b"http:", b"\\", b"*", b"",
                     b"x" * 5000, b"%25", b"v1", b"chat", b"completions", b"p", b"fake",
                     b"admin", b"keys", b"realtime", b"models", b"files", b"batches"]),
    st.binary(min_size=1, max_size=12).map(
        lambda raw: raw.replace(b" ", b"%20").replace(b"\r", b"").replace(b"\n", b"")))
_queries = st.one_of(st.just(b""), st.lists(st.tuples(_segments, _segments), max_size=4).map(
    lambda pairs: b"?" + b"&".join(b"%s=%s" % pair for pair in pairs)),
    st.sampled_from([b"?", b"??", b"?model=demo&model=x", b"?after=" + b"9" * 400,
                     b"?limit=-1", b"?limit=1e99", b"?a=%"]))


@st.composite
def path_requests(draw: Any) -> tuple[bytes, bool]:
    """A request to an odd path with an odd query."""
    segments = draw(st.lists(_segments, min_size=0, max_size=6))
    prefix = draw(st.sampled_from([b"/", b"/v1/", b"//", b"/p/", b"/admin/", b"http://h/", b"*",
                                   b"/v1/files/", b"/v1/batches/", b"/v1/responses/"]))
    target = (prefix + b"/".join(segments) + draw(_queries)).replace(b" ", b"%20")
    method = draw(st.sampled_from(METHODS))
    body = draw(st.sampled_from([b"", CHAT]))
    return _request(method, target, [(b"Content-Length", b"%d" % len(body)),
                                     (b"Authorization", b"Bearer " + GOOD_KEY),
                                     (b"Connection", b"close")], body), True


@st.composite
def multipart_requests(draw: Any) -> tuple[bytes, bool]:
    """A multipart body with odd boundaries, dispositions and parts."""
    boundary = draw(st.sampled_from([b"b", b"x" * 71, b"x" * 200, b"", b'"q"', b"a b",
                                     b"--", b"\xff"]))
    declared = draw(st.sampled_from([boundary, boundary + b"x", b""]))
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(st.sampled_from([b"model", b"file", b"purpose", b"image", b"prompt",
                                     b"response_format", b"language", b"", b"\xff", b"file[]"]))
        disposition = draw(st.sampled_from([
            b'form-data; name="%s"' % name,
            b'form-data; name="%s"; filename="a.wav"' % name,
            b'form-data; name=%s; filename=' % name, b"attachment", b"", b'form-data; name="',
            b'form-data; name="%s"; filename*=UTF-8\'\'%%ff' % name]))
        value = draw(st.sampled_from([b"demo", b"whisper-1", b"batch", b"RIFF\x00\x00",
                                      b"", b"\x00" * 100, b"--" + boundary, b"x" * 70000,
                                      CHAT, b'{"custom_id": 1}']))
        extra = draw(st.sampled_from([b"", b"Content-Type: audio/wav\r\n",
                                      b"Content-Type: \xff\r\n", b"X: " + b"y" * 9000 + b"\r\n"]))
        parts.append(b"--%s\r\nContent-Disposition: %s\r\n%s\r\n%s\r\n"
                     % (boundary, disposition, extra, value))
    ending = draw(st.sampled_from([b"--%s--\r\n" % boundary, b"", b"--%s" % boundary,
                                   b"--%s--" % boundary, b"garbage"]))
    body = b"".join(parts) + ending
    content_type = draw(st.sampled_from([b"multipart/form-data; boundary=" + declared,
                                         b"multipart/form-data", b"multipart/mixed; boundary=b",
                                         b"multipart/form-data; boundary=" + declared
                                         + b"; charset=utf-8", b"application/json"]))
    path = draw(st.sampled_from(MULTIPART_PATHS))
    return _request(b"POST", path, [(b"Content-Type", content_type),
                                    (b"Content-Length", b"%d" % len(body)),
                                    (b"Authorization", b"Bearer " + GOOD_KEY),
                                    (b"Connection", b"close")], body), True


#: The endpoints that answer in Anthropic's dialect (any other path's 404 is OpenAI's).
ANTHROPIC_PATH = re.compile(rb"^(/anthropic)?/v1/messages(/count_tokens)?$")


def check_http(request: bytes, complete: bool, answer: RawAnswer) -> str | None:
    """What is wrong with ``answer``, or None."""
    if answer.timed_out and complete and answer.status == 0:
        return "no answer (hang)"
    if answer.status >= 500:
        return f"a {answer.status}"
    if answer.status == 0 or answer.status < 400 or not answer.body:
        return None  # closed without an answer, a success, or a bare status line
    content_type = answer.headers.get(b"content-type", b"")
    if b"json" not in content_type:
        if b"<html" in answer.body.lower():
            return f"an HTML error page ({answer.status})"
        return None
    try:
        error = orjson.loads(answer.body)
    except orjson.JSONDecodeError:
        return f"a {answer.status} whose JSON body does not parse"
    target = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b""
    path = target.split(b"?")[0]
    if path.endswith(b"/rerank"):  # Cohere's dialect: a message, the status says the rest
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            return f"a {answer.status} not in Cohere's dialect"
        return None
    if not isinstance(error, dict) or not isinstance(error.get("error"), dict | str):
        return f"a {answer.status} with no error object"
    if ANTHROPIC_PATH.match(path) and error.get("type") != "error":
        return f"a {answer.status} not in the Anthropic dialect"
    return None


# WebSocket: a handshake, then frames.

_MAX_MESSAGE = 65536  # the fuzzed gateway's realtime.max_message_bytes


def ws_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0,
             mask: bytes | None = b"\x01\x02\x03\x04", length: int | None = None) -> bytes:
    """One frame; ``length`` declares another length than the payload's."""
    size = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    flag = 0x80 if mask is not None else 0
    if size < 126:
        head += bytes([flag | size])
    elif size < 65536:
        head += bytes([flag | 126]) + struct.pack("!H", size)
    else:
        head += bytes([flag | 127]) + struct.pack("!Q", size)
    if mask is None:
        return head + payload
    return head + mask + bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))


CLOSE = ws_frame(8, struct.pack("!H", 1000))
_payloads = st.sampled_from([
    b'{"type":"response.create"}', b'{"type":"session.update","session":{}}', b"{", b"",
    b"\xff\xfe\xfd", b"\xed\xa0\x80", b"caf\xc3", b'{"type":"' + b"x" * 300 + b'"}',
    b"\x00" * 130, b'{"type":"input_audio_buffer.append","audio":"AAAA"}', b"[]", b"null"])


@st.composite
def ws_frames(draw: Any) -> list[bytes]:
    """A few frames, each possibly odd: opcode, reserved bits, mask, length, fragments."""
    frames = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 7))
        payload = draw(_payloads)
        if kind == 0:  # a well-formed text frame
            frames.append(ws_frame(1, payload))
        elif kind == 1:  # an opcode that is not defined
            frames.append(ws_frame(draw(st.sampled_from([3, 4, 5, 6, 7, 11, 12, 15])), payload))
        elif kind == 2:  # reserved bits set
            frames.append(ws_frame(draw(st.sampled_from([1, 2, 9])), payload,
                                   rsv=draw(st.integers(1, 7))))
        elif kind == 3:  # not masked, or an all-zero mask
            frames.append(ws_frame(1, payload, mask=draw(st.sampled_from([None,
                                                                           b"\0\0\0\0"]))))
        elif kind == 4:  # a length past the limit, or the 64-bit length's top bit
            frames.append(ws_frame(draw(st.sampled_from([1, 2])), b"x" * 10,
                                   length=draw(st.sampled_from(
                                       [_MAX_MESSAGE + 1, 2 ** 31, 2 ** 63 - 1, 2 ** 63]))))
        elif kind == 5:  # fragments out of order: a continuation first, or a new start
            frames.append(ws_frame(draw(st.sampled_from([0, 1])), payload, fin=False))
            frames.append(ws_frame(draw(st.sampled_from([0, 1, 2])), payload,
                                   fin=draw(st.booleans())))
        elif kind == 6:  # control frames: fragmented, too long, a close with a bad code
            frames.append(draw(st.sampled_from([
                ws_frame(9, b"ping", fin=False), ws_frame(9, b"p" * 126),
                ws_frame(8, b"\x03\xe8" + b"\xff\xfe"), ws_frame(8, b"\x00\x00"),
                ws_frame(8, b"\x0b\xb8"), ws_frame(8, b"x"), ws_frame(10, b"pong")])))
        else:  # a binary frame, or bytes that are no frame (reserved bits, bad opcodes)
            frames.append(draw(st.sampled_from([ws_frame(2, payload), payload,
                                                b"GET / HTTP/1.1\r\n\r\n"])))
    return frames


_handshake_headers = st.lists(st.sampled_from([
    (b"Sec-WebSocket-Version", b"8"), (b"Sec-WebSocket-Version", b"x"),
    (b"Sec-WebSocket-Key", b"short"), (b"Sec-WebSocket-Key", b""),
    (b"Sec-WebSocket-Protocol", b"realtime, openai-insecure-api-key."),
    (b"Sec-WebSocket-Protocol", b"openai-insecure-api-key." + b"k" * 5000),
    (b"Sec-WebSocket-Protocol", b"\xff\xfe"), (b"Sec-WebSocket-Extensions",
                                               b"permessage-deflate; client_max_window_bits"),
    (b"Upgrade", b"h2c"), (b"Connection", b"keep-alive"), (b"Origin", b"\x00"),
    (b"Authorization", b"Bearer wrong"), (b"Authorization", b"Bearer"),
]), max_size=3)
_realtime_queries = st.sampled_from([b"?model=demo", b"", b"?model=", b"?model=nope",
                                     b"?model=demo&model=x", b"?intent=transcription",
                                     b"?model=%ff", b"?model=" + b"m" * 3000])


@st.composite
def ws_sessions(draw: Any) -> tuple[bytes, list[bytes]]:
    """A realtime upgrade, valid or not, and the frames sent if it is accepted."""
    headers = {b"Upgrade": b"websocket", b"Connection": b"Upgrade",
               b"Sec-WebSocket-Key": b"dGhlIHNhbXBsZSBub25jZQ==",
               b"Sec-WebSocket-Version": b"13", b"Authorization": b"Bearer " + GOOD_KEY}
    for name, value in draw(_handshake_headers):
        headers[name] = value
    query = draw(_realtime_queries)
    head = b"".join(b"%s: %s\r\n" % item for item in headers.items())
    request = b"GET /v1/realtime%s HTTP/1.1\r\nHost: gw\r\n%s\r\n" % (query, head)
    return request, draw(ws_frames())


def cancel_batched_timers(reactor: Any) -> None:
    """Autobahn's batched timers keep a bucket armed after its calls were cancelled."""
    for call in reactor.getDelayedCalls():
        if getattr(call.func, "__name__", "") == "_notify_bucket":
            call.cancel()


def ws_close_code(data: bytes) -> int | None:
    """The code of the first close frame the server sent in ``data`` (frames unmasked)."""
    at = 0
    while at + 2 <= len(data):
        opcode, size = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if size == 126:
            size, at = struct.unpack("!H", data[at:at + 2])[0], at + 2
        elif size == 127:
            size, at = struct.unpack("!Q", data[at:at + 8])[0], at + 8
        if opcode == 8:
            return struct.unpack("!H", data[at:at + 2])[0] if size >= 2 else 1005
        at += size
    return None


def run_ws(port: int, request: bytes, frames: list[bytes], timeout: float = 5.0) -> str | None:
    """Play one session; what is wrong with how the gateway took it, or None."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        received = bytearray()
        try:
            while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
                received += chunk
        except TimeoutError:
            return "no answer to the upgrade (hang)"
        head, _, rest = bytes(received).partition(b"\r\n\r\n")
        answer = parse_answer(bytes(received))
        if answer.status != 101:
            try:
                while not whole(received) and (chunk := sock.recv(65536)):
                    received += chunk
            except (TimeoutError, OSError):
                pass
            refusal = parse_answer(bytes(received))
            if refusal.status == 502 and b"upstream" in refusal.body:
                return None  # the fuzzed model's route leads to an upstream that refused
            return check_http(request, True, refusal)
        try:
            for frame in frames:
                sock.sendall(frame)
            sock.sendall(CLOSE)
        except OSError:  # the gateway closed on a bad frame already
            pass
        data = bytearray(rest)
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            return "the session did not end after a close (hang)"
        except OSError:
            pass
        code = ws_close_code(bytes(data))
        if code == 1011:
            return "closed with 1011 (internal error)"
        return None


def hunt_http(port: int, request: bytes, complete: bool) -> str | None:
    # An incomplete request may be waited on: a short wait tells that from an answer.
    return check_http(request, complete, send_raw(port, request, timeout=3.0 if complete
                                                  else 0.3))
