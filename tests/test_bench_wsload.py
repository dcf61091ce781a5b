"""
bench/wsload.c, the realtime bench's C client and echo upstream, checked against the
``websockets`` library: the handshake, the echo's rewrite, long and fragmented messages,
ping/pong, and what ``wsload load``, ``hold`` and ``churn`` report.  Counts only, never times.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

SOURCE = Path(__file__).parent.parent / "bench" / "wsload.c"

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


@pytest.fixture(scope="module")
def wsload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    binary = tmp_path_factory.mktemp("wsload") / "wsload"
    subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-o", str(binary),
                    str(SOURCE)], check=True)
    return binary


@pytest.fixture(scope="module")
def echo_url(wsload: Path) -> Iterator[str]:
    echo = subprocess.Popen([str(wsload), "echo", "--port", "0"], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert echo.stdout is not None
        ready = re.fullmatch(r"ready on http://127\.0\.0\.1:(\d+)\n", echo.stdout.readline())
        assert ready, "the echo did not say where it listens"
        yield f"ws://127.0.0.1:{ready.group(1)}/v1/realtime?model=bench-realtime"
    finally:
        echo.terminate()
        echo.wait(10)


def client(wsload: Path, mode: str, url: str, *options: str) -> str:
    done = subprocess.run([str(wsload), mode, "--url", url, *options], check=True,
                          capture_output=True, text=True, timeout=60)
    return done.stdout


def test_echo_rewrites_appends_as_output_deltas(echo_url: str) -> None:
    with connect(echo_url, max_size=None, compression=None) as ws:  # checks the accept key
        assert ws.recv() == '{"type":"session.created","event_id":"e0","session":{}}'
        ws.send('{"type":"input_audio_buffer.append","event_id":"7","audio":"AAAA",'
                '"note":"input_audio_buffer.append \\"audio\\":"}')
        assert ws.recv() == ('{"type":"response.output_audio.delta","event_id":"7",'
                             '"delta":"AAAA","note":"input_audio_buffer.append \\"audio\\":"}')
        ws.send(["input_audio_buffer.", "append", ' "audio": "x"'])  # fragmented
        assert ws.recv() == 'response.output_audio.delta "delta": "x"'


def test_echo_carries_long_messages_and_answers_pings(echo_url: str) -> None:
    with connect(echo_url, max_size=None, compression=None) as ws:
        ws.recv()
        long = '"audio":' + "x" * 69_992  # 70,000 bytes: a 64-bit length both ways
        ws.send(long)
        assert ws.recv() == '"delta":' + "x" * 69_992
        ws.send(bytes(range(256)) * 300)  # 76,800 bytes, binary stays binary
        assert ws.recv() == bytes(range(256)) * 300
        ws.send("x" * 300)  # a 16-bit length
        assert ws.recv() == "x" * 300
        assert ws.ping(b"are you there").wait(10)
    assert ws.close_code == 1000


def masked_frame(payload: bytes, opcode: int = 1) -> bytes:
    key = os.urandom(4)
    size = len(payload)
    length = (struct.pack("!B", 0x80 | size) if size < 126 else
              struct.pack("!BH", 0x80 | 126, size) if size < 65536 else
              struct.pack("!BQ", 0x80 | 127, size))
    body = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
    return struct.pack("!B", 0x80 | opcode) + length + key + body


def read_frames(sock: socket.socket, count: int, buffer: bytes = b"") -> list[bytes]:
    """``count`` whole server frames' payloads (unmasked, unfragmented, as the echo sends)."""
    def at_least(size: int) -> bytes:
        nonlocal buffer
        while len(buffer) < size:
            buffer += sock.recv(1 << 20)
        return buffer

    payloads = []
    while len(payloads) < count:
        size, header = at_least(2)[1] & 127, 2
        if size >= 126:
            header = 4 if size == 126 else 10
            size = int.from_bytes(at_least(header)[2:header], "big")
        payloads.append(at_least(header + size)[header:header + size])
        buffer = buffer[header + size:]
    return payloads


def test_echo_reads_split_and_joined_frames_and_queues_what_it_cannot_send(
        echo_url: str) -> None:
    port = int(echo_url.split(":")[2].split("/")[0])
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (f"GET /v1/realtime HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(upgrade[:30])  # a head in two reads
        sock.sendall(upgrade[30:] + masked_frame(b"joined to the head"))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        for byte in masked_frame(b"one byte at a time" * 10):
            sock.send(bytes([byte]))
        sock.sendall(masked_frame(b"two") + masked_frame(b"in one write"))
        assert read_frames(sock, 5, rest) == [
            b'{"type":"session.created","event_id":"e0","session":{}}',
            b"joined to the head", b"one byte at a time" * 10, b"two", b"in one write"]
        big = os.urandom(70_000)
        sock.sendall(masked_frame(big, opcode=2) * 400)  # more than the socket buffers hold
        assert read_frames(sock, 400) == [big] * 400


def test_load_measures_every_answered_append_after_warmup(wsload: Path, echo_url: str) -> None:
    result = json.loads(client(wsload, "load", echo_url, "--sessions", "2", "--seconds", "1",
                               "--warmup", "0.2", "--key", "sk-anything"))
    assert result["frames_sent"] == 2 * 50
    assert result["frames_expected"] == 2 * 50 * 0.8
    assert abs(result["frames"] - 2 * 50 * 0.8) <= 8
    assert result["failed_sessions"] == 0 and result["failures"] == []
    assert 0 < result["p50_ms"] <= result["p99_ms"] < 1000
    assert 0 <= result["late_sends"] <= result["frames_sent"]


def test_load_reports_sessions_it_could_not_open(wsload: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections are refused
        result = json.loads(client(wsload, "load", f"ws://127.0.0.1:{port}/", "--sessions",
                                   "4", "--seconds", "1", "--warmup", "0"))
    assert result["failed_sessions"] == 4
    assert result["failures"] == ["connect: Connection refused"] * 3
    assert result["frames"] == result["frames_sent"] == 0
    assert result["p50_ms"] is None


def test_upgrades_carry_the_key_and_a_refusal_is_a_failure(wsload: Path) -> None:
    heads = []

    def refuse(listener: socket.socket) -> None:
        connection, _ = listener.accept()
        with connection:
            head = b""
            while b"\r\n\r\n" not in head:
                head += connection.recv(4096)
            heads.append(head.decode())
            connection.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")

    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(target=refuse, args=(listener,))
        server.start()
        url = f"ws://127.0.0.1:{listener.getsockname()[1]}/v1/realtime?model=m"
        result = json.loads(client(wsload, "load", url, "--sessions", "1", "--seconds", "1",
                                   "--warmup", "0", "--key", "sk-test"))
        server.join(10)
    assert heads[0].startswith("GET /v1/realtime?model=m HTTP/1.1\r\n")
    assert "\r\nAuthorization: Bearer sk-test\r\n" in heads[0]
    assert result["failures"] == ["upgrade refused: HTTP/1.1 401 Unauthorized"]


def test_hold_keeps_sessions_open_until_stdin_closes(wsload: Path, echo_url: str) -> None:
    holder = subprocess.Popen([str(wsload), "hold", "--url", echo_url, "--sessions", "150"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline() == "open\n"
    assert holder.poll() is None
    holder.stdin.close()
    assert holder.wait(30) == 0


def test_churn_opens_and_closes_every_session(wsload: Path, echo_url: str) -> None:
    assert json.loads(client(wsload, "churn", echo_url, "--sessions", "250")) == {"failed": 0}
