"""Raw HTTP/1.1 over a loopback socket: the bytes a test writes go out exactly as written."""

from __future__ import annotations

import socket

import attrs


@attrs.frozen
class RawAnswer:
    """What came back: the status (0 when none came), the headers (lowercased), the body."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes
    #: Whether no whole answer came within the timeout.
    timed_out: bool = False


def send_raw(port: int, data: bytes, timeout: float = 5.0) -> RawAnswer:
    """Write ``data`` and read the first answer: whole, or what came before a close."""
    received = bytearray()
    timed_out = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the server may answer and close before reading everything
            pass
        try:
            while not whole(received) and (chunk := sock.recv(65536)):
                received += chunk
        except TimeoutError:
            timed_out = True
        except OSError:  # a reset after the answer
            pass
    return parse_answer(bytes(received), timed_out and not whole(received))


def whole(data: bytes | bytearray) -> bool:
    """Whether ``data`` holds one whole answer (by its length, or its last chunk)."""
    head, found, body = bytes(data).partition(b"\r\n\r\n")
    if not found:
        return False
    answer = parse_answer(bytes(data))
    if answer.status in (100, 101, 204, 304):
        return True
    if b"chunked" in answer.headers.get(b"transfer-encoding", b""):
        return body.endswith(b"0\r\n\r\n")
    length = answer.headers.get(b"content-length")
    return length is not None and length.isdigit() and len(body) >= int(length)


def parse_answer(data: bytes, timed_out: bool = False) -> RawAnswer:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if b"content-length" in headers and headers[b"content-length"].isdigit():
        body = body[:int(headers[b"content-length"])]
    return RawAnswer(status, headers, body, timed_out)
