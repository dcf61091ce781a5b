"""
End to end: multipart uploads go upstream as they arrive (`txgateway.web.upload`), through
raw sockets that send a form piece by piece, to a fake upstream that reports each body chunk
the moment it reads it.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import orjson
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import UNKNOWN_LENGTH
from twisted.web.server import Request

from tests.fake_openai_rest import TRANSCRIPT
from tests.gateway_harness import CONFIG, GatewayTestCase
from txgateway.dialects.multipart import FormParser, PartHead
from txgateway.dialects.openai import BadRequest
from txgateway.web.upload import Upload

LIMIT = 16 * 1024 * 1024
BOUNDARY = b"UpLoAd"
CONTENT_TYPE = b"multipart/form-data; boundary=" + BOUNDARY

UPLOAD_CONFIG = (
    CONFIG.replace("max_body_bytes: 65536", f"max_body_bytes: {LIMIT}")
    .replace("first_byte_timeout: 1", "first_byte_timeout: 5")
    .replace("providers:\n", "providers:\n"
             "  breaking:\n    plugin: openai\n"
             "    base_url: http://127.0.0.1:{upstream_port}/break/v1\n"
             "  pausing:\n    plugin: openai\n"
             "    base_url: http://127.0.0.1:{upstream_port}/pause/v1\n")
    .replace("models:\n", "models:\n"
             "  - name: breaks-upload\n    provider: breaking\n"
             "  - name: pauses-upload\n    provider: pausing\n"
             "  - name: upload-falls-back\n    targets:\n"
             "      - {{provider: nowhere, model: whisper-1}}\n"
             "      - {{provider: fake, model: whisper-1, priority: 1}}\n"
             "  - name: upload-sent-once\n    targets:\n"
             "      - {{provider: fake, model: error-503}}\n"
             "      - {{provider: fake, model: whisper-1, priority: 1}}\n")
)


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"\r\nContent-Type: audio/wav'
    return (b"--" + BOUNDARY + b"\r\nContent-Disposition: " + disposition.encode()
            + b"\r\n\r\n" + value + b"\r\n")


CLOSING = b"--" + BOUNDARY + b"--\r\n"


def request_head(length: int | None, extra: bytes = b"") -> bytes:
    framing = b"Transfer-Encoding: chunked" if length is None else b"Content-Length: %d" % length
    return (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: " + CONTENT_TYPE + b"\r\n" + framing + b"\r\n" + extra + b"\r\n")


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class UploadWatch:
    """What the fake upstream saw of the bodies it read, as it read them."""

    def __init__(self) -> None:
        self.received = 0
        self.lost = 0
        self.paused_channel: Any = None
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self._lost_waiters: list[Deferred[None]] = []

    def saw(self, size: int) -> None:
        self.received += size
        ready = [waiter for waiter in self._waiters if self.received >= waiter[0]]
        for waiter in ready:
            self._waiters.remove(waiter)
            waiter[1].callback(None)

    def reached(self, size: int) -> Deferred[None]:
        """Fires once the upstream has read ``size`` body bytes."""
        waiter: Deferred[None] = Deferred()
        self._waiters.append((size, waiter))
        self.saw(0)
        return waiter

    def connection_lost(self) -> None:
        self.lost += 1
        waiters, self._lost_waiters = self._lost_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def wait_lost(self) -> Deferred[None]:
        waiter: Deferred[None] = Deferred()
        if self.lost:
            waiter.callback(None)
        else:
            self._lost_waiters.append(waiter)
        return waiter


class WatchedRequest(Request):
    """The fake's requests: each body chunk reported as read; ``/break`` paths cut the
    connection at the first chunk, ``/pause`` paths stop reading it."""

    def handleContentChunk(self, data: bytes) -> None:
        watch = self.channel.site.watch
        path = self.channel._path
        watch.saw(len(data))
        if path.startswith(b"/break/"):
            self.channel.transport.abortConnection()
            return
        if path.startswith(b"/pause/") and watch.paused_channel is None:
            watch.paused_channel = self.channel
            self.channel.transport.pauseProducing()
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if path.startswith(b"/pause/"):  # renamed for the fake's own handler
            path = path[len(b"/pause"):]
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self.channel.site.watch.connection_lost()
        super().connectionLost(reason)


class RawClient(Protocol):
    """An HTTP/1.1 client that writes what it is told, when told, and reads answers."""

    def __init__(self) -> None:
        self.data = b""
        self.continued = False
        self.closed: Deferred[None] = Deferred()
        self._waiting: Deferred[tuple[int, dict[bytes, bytes], bytes]] | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._check()

    def connectionLost(self, reason: Any = None) -> None:
        self.closed.callback(None)

    def response(self) -> Deferred[tuple[int, dict[bytes, bytes], bytes]]:
        """The next whole answer (with a Content-Length): status, headers, body."""
        self._waiting = Deferred()
        waiting = self._waiting
        self._check()
        return waiting

    def _check(self) -> None:
        end = self.data.find(b"\r\n\r\n")
        if self._waiting is None or end < 0:
            return
        lines = self.data[:end].split(b"\r\n")
        if lines[0].startswith(b"HTTP/1.1 100 "):
            self.continued = True
            self.data = self.data[end + 4:]
            self._check()
            return
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        length = int(headers[b"content-length"])
        if len(self.data) < end + 4 + length:
            return
        body = self.data[end + 4:end + 4 + length]
        self.data = self.data[end + 4 + length:]
        waiting, self._waiting = self._waiting, None
        waiting.callback((int(lines[0].split(b" ")[1]), headers, body))


class UploadStreamingTests(GatewayTestCase):
    config = UPLOAD_CONFIG

    async def _start(self) -> None:
        await super()._start()
        self.watch = self.fake_site.watch = UploadWatch()
        self.fake_site.requestFactory = WatchedRequest
        self.port = int(self.base_url.rsplit(":", 1)[1])

    async def connect(self) -> RawClient:
        client = RawClient()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        self.addCleanup(lambda: client.transport.abortConnection())
        return client

    async def test_file_reaches_upstream_before_upload_ends(self) -> None:
        """The upstream reads the first half of the file while the second is unsent."""
        audio = os.urandom(400_000)
        head = part("model", b"renamed") + part("language", b"en") + part(
            "file", b"", "speech.wav")[:-2]
        body = head + audio + b"\r\n" + CLOSING
        client = await self.connect()
        client.transport.write(request_head(len(body)) + head + audio[:200_000])
        await self.watch.reached(200_000)
        self.assertEqual(self.fake.forms, [])
        client.transport.write(audio[200_000:] + b"\r\n" + CLOSING)
        status, headers, answer = await client.response()
        self.assertEqual((status, orjson.loads(answer)["text"]), (200, TRANSCRIPT))
        path, fields, files = self.fake.forms[0]
        self.assertEqual(fields, {"model": "upstream-name", "language": "en"})
        self.assertEqual(files["file"], ("speech.wav", "audio/wav",
                                         hashlib.sha256(audio).hexdigest(), len(audio)))
        [record] = self.access_records()
        self.assertEqual((record["model"], record["status"], record["input_tokens"]),
                         ("renamed", 200, 120))

    async def test_model_after_file_chunked(self) -> None:
        """A model sent after the file is waited for (the file held), then renamed; a client
        that expects 100-continue hears it first."""
        audio = os.urandom(300_000)
        client = await self.connect()
        client.transport.write(request_head(None, b"Expect: 100-continue\r\n")
                               + chunk(part("file", audio, "a.wav")))
        await deferLater(reactor, 0.1)
        self.assertEqual(self.watch.received, 0)  # not routed yet: nothing went upstream
        client.transport.write(chunk(part("model", b"renamed") + CLOSING) + b"0\r\n\r\n")
        status, _, answer = await client.response()
        self.assertEqual((status, client.continued), (200, True), answer)
        _, fields, files = self.fake.forms[0]
        self.assertEqual(fields["model"], "upstream-name")
        self.assertEqual(files["file"][2:], (hashlib.sha256(audio).hexdigest(), len(audio)))

    async def test_fallback_only_before_the_first_byte(self) -> None:
        """A target that cannot be reached falls back, the upload replayed from its start;
        an upstream that answered 503 after taking the upload is answered as is."""
        audio = os.urandom(100_000)
        for model, status in (("upload-falls-back", 200), ("upload-sent-once", 503)):
            body = part("model", model.encode()) + part("file", audio, "a.wav") + CLOSING
            response = await treq.post(self.base_url + "/v1/audio/transcriptions", body,
                                       pool=self.pool,
                                       headers={b"content-type": [CONTENT_TYPE]})
            answer = await response.json()
            self.assertEqual(response.code, status, answer)
        self.assertEqual([form[1]["model"] for form in self.fake.forms],
                         ["whisper-1", "error-503"])
        self.assertEqual(self.fake.forms[0][2]["file"][2], hashlib.sha256(audio).hexdigest())
        self.assertEqual(answer["error"]["code"], "fake_503")
        self.assertEqual([record["attempts"] for record in self.access_records()], [2, 1])

    async def test_unstreamed_path_buffered(self) -> None:
        """A path the site does not stream (a trailing slash) reaches the same endpoint with
        its body held whole: the same answer."""
        audio = os.urandom(1000)
        body = part("model", b"renamed") + part("file", audio, "a.wav") + CLOSING
        response = await treq.post(self.base_url + "/v1/audio/transcriptions/", body,
                                   pool=self.pool, headers={b"content-type": [CONTENT_TYPE]})
        self.assertEqual((response.code, (await response.json())["text"]), (200, TRANSCRIPT))
        self.assertEqual(self.fake.forms[0][1]["model"], "upstream-name")

    async def test_client_disconnect_cancels_upstream(self) -> None:
        head = part("model", b"whisper-1") + part("file", b"", "a.wav")[:-2]
        client = await self.connect()
        client.transport.write(request_head(len(head) + 1_000_000) + head + bytes(100_000))
        await self.watch.reached(100_000)
        started = reactor.seconds()
        client.transport.abortConnection()
        await self.watch.wait_lost()
        self.assertLess(reactor.seconds() - started, 0.5)
        await deferLater(reactor, 0.05)
        [record] = self.access_records()
        self.assertEqual((record["model"], record["status"]), ("whisper-1", 499))
        self.assertEqual(self.fake.forms, [])

    async def test_oversized_chunked_upload(self) -> None:
        """Past the limit mid-upload: 413, the upstream call aborted, the body dropped."""
        head = part("model", b"whisper-1") + part("file", b"", "a.wav")[:-2]
        client = await self.connect()
        client.transport.write(request_head(None) + chunk(head + bytes(100_000)))
        await self.watch.reached(100_000)
        for _ in range(LIMIT // 1_000_000 + 1):
            client.transport.write(chunk(bytes(1_000_000)))
        status, headers, answer = await client.response()
        self.assertEqual((status, headers[b"connection"]), (413, b"close"))
        self.assertEqual(orjson.loads(answer)["error"]["code"], "request_too_large")
        await self.watch.wait_lost()
        client.transport.write(chunk(bytes(1000)) + b"0\r\n\r\n")
        await client.closed  # once the body has ended
        self.assertEqual(self.fake.forms, [])
        [record] = self.access_records()
        self.assertEqual(record["status"], 413)

    async def test_upstream_failure_mid_upload(self) -> None:
        """The upstream cuts the upload: 502 at once, the rest of the body read and dropped,
        and the connection serves the next request."""
        head = part("model", b"breaks-upload") + part("file", b"", "a.wav")[:-2]
        tail = bytes(200_000) + b"\r\n" + CLOSING
        client = await self.connect()
        client.transport.write(request_head(len(head) + 100_000 + len(tail)) + head
                               + bytes(100_000))
        status, _, answer = await client.response()
        self.assertEqual(status, 502)
        self.assertEqual(orjson.loads(answer)["error"]["code"], "upstream_connection_lost")
        client.transport.write(tail + b"GET /health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        status, _, _ = await client.response()
        self.assertEqual(status, 200)
        [record] = self.access_records()
        self.assertEqual((record["status"], record["attempts"]), (502, 1))  # no fallback

    async def test_upstream_backpressure_pauses_client(self) -> None:
        """While the upstream reads nothing, the gateway stops reading the client."""
        size = 12 * 1024 * 1024
        head = part("model", b"pauses-upload") + part("file", b"", "a.wav")[:-2]
        tail = b"\r\n" + CLOSING
        client = await self.connect()
        client.transport.write(request_head(len(head) + size + len(tail)) + head
                               + bytes(size) + tail)
        [transport] = self.service.site._transports
        for _ in range(100):
            await deferLater(reactor, 0.05)
            if transport not in reactor.getReaders():
                break
        self.assertNotIn(transport, reactor.getReaders())
        await deferLater(reactor, 0.2)
        self.assertNotIn(transport, reactor.getReaders())
        self.assertLess(self.watch.received, size // 2)
        self.watch.paused_channel.transport.resumeProducing()
        status, _, answer = await client.response()
        self.assertEqual(status, 200, answer)
        self.assertEqual(self.fake.forms[0][2]["file"][3], size)


class FormParserTests(SynchronousTestCase):
    def test_split_anywhere(self) -> None:
        """Fed a byte at a time, the parts, fields and the model's place are the same."""
        body = (part("model", b"whisper-1") + part("file", b"x\r\n--UpLoA" * 3, "a.wav")
                + part("stream", b"true") + CLOSING + b"epilogue")
        parser = FormParser(BOUNDARY)
        for index in range(len(body)):
            parser.feed(body[index:index + 1])
        parser.close()
        self.assertEqual(parser.fields, {"model": "whisper-1", "stream": "true"})
        self.assertEqual(parser.names, {"model", "file", "stream"})
        start, end = parser.model_span
        self.assertEqual(body[start:end], b"whisper-1")

    def test_parts_handed_over(self) -> None:
        """Each part's head (its content's offset) and content, however the body is cut."""
        body = (part("purpose", b"batch") + part("file", b"line\r\n--UpLoA\n" * 50, "in.jsonl")
                + CLOSING)
        for size in (1, 7, len(body)):
            parts = PartsSeen()
            parser = FormParser(BOUNDARY, parts)
            for index in range(0, len(body), size):
                parser.feed(body[index:index + size])
            parser.close()
            seen = parts.seen
            heads = [one for one in seen if isinstance(one, PartHead)]
            self.assertEqual([(head.name, head.filename) for head in heads],
                             [("purpose", None), ("file", "in.jsonl")])
            self.assertEqual(body[heads[1].start:heads[1].start + 4], b"line")
            contents = b"".join(one if isinstance(one, bytes) else b"|"
                                for one in seen if not isinstance(one, PartHead))
            self.assertEqual(contents, b"batch|" + b"line\r\n--UpLoA\n" * 50 + b"|")

    def test_malformed(self) -> None:
        for body in (b"--Other\r\n", part("model", b"m") + b"--" + BOUNDARY + b"xx",
                     b"--" + BOUNDARY + b"\r\nX-No: disposition\r\n\r\nv\r\n"):
            parser = FormParser(BOUNDARY)
            with self.assertRaises(BadRequest):
                parser.feed(body)
                parser.feed(b"\r\n" + CLOSING)
        parser = FormParser(BOUNDARY)
        parser.feed(part("model", b"m"))
        self.assertRaises(BadRequest, parser.close)


class PartsSeen:
    """A `FormParts` noting what it is handed: heads, content pieces, None for each end."""

    def __init__(self) -> None:
        self.seen: list[PartHead | bytes | None] = []

    def part_started(self, head: PartHead) -> None:
        self.seen.append(head)

    def part_data(self, chunk: bytes) -> None:
        self.seen.append(chunk)

    def part_ended(self) -> None:
        self.seen.append(None)


class UploadTests(SynchronousTestCase):
    def test_held_until_started_then_backpressure(self) -> None:
        """Held (the client paused past ``hold``) until the producer starts; then the
        upstream's pauses pause the client; the last chunk waits for the body's end."""
        client = StringTransport()
        upload = Upload(client, 3 * Upload.hold)
        upload.feed(b"a" * Upload.hold)
        self.assertEqual(client.producerState, "producing")
        upload.feed(b"b" * Upload.hold)
        self.assertEqual(client.producerState, "paused")
        upstream = StringTransport()
        producer = upload.producer((0, 1, b"AA"))
        self.assertEqual(producer.length, 3 * Upload.hold + 1)
        done = producer.startProducing(upstream)
        self.assertEqual(client.producerState, "producing")
        self.assertEqual(upstream.value()[:3], b"AAa")
        producer.pauseProducing()
        self.assertEqual(client.producerState, "paused")
        producer.resumeProducing()
        upload.feed(b"c" * Upload.hold)
        self.assertEqual(len(upstream.value()), 2 * Upload.hold + 1)
        self.assertNoResult(done)
        upload.end()
        self.assertEqual(len(upstream.value()), 3 * Upload.hold + 1)
        self.successResultOf(done)
        self.assertRaises(RuntimeError, upload.producer)

    def test_splice_in_the_last_chunk(self) -> None:
        """
        A splice that reaches into the last chunk of a Content-Length body (a whole small
        form in one read, the producer started before the site ends the body) is applied,
        and what follows it still waits for the end.
        """
        for chunks, splice in (([b"model=ab&rest"], (6, 8, b"XYZ")),
                               ([b"model=a", b"b&rest"], (6, 8, b"XYZ")),
                               ([b"mode", b"l=ab&rest"], (6, 8, b"XYZ"))):
            upload = Upload(StringTransport(), sum(map(len, chunks)))
            for chunk in chunks:
                upload.feed(chunk)
            producer = upload.producer(splice)
            self.assertEqual(producer.length, 14)
            upstream = StringTransport()
            done = producer.startProducing(upstream)
            self.assertEqual(upstream.value(), b"".join(chunks[:-1])[:6])
            self.assertNoResult(done)
            upload.end()
            self.assertEqual(upstream.value(), b"model=XYZ&rest")
            self.successResultOf(done)

    def test_rewritten_by_its_watcher(self) -> None:
        """Rewritten: the kept bytes then what the watcher emits, held until the producer
        starts (the client paused past ``hold``), of unknown length, the upstream's pauses
        pausing the client, ended only once the watcher found the body whole."""
        client = StringTransport()
        upload = Upload(client, 10 * Upload.hold)
        watcher = Rewriter(upload)
        upload.watch(watcher)
        upload.feed(b"head|" + b"a" * 10)
        self.assertEqual(upload.received, 15)
        upload.feed(b"a" * Upload.hold)
        self.assertEqual(client.producerState, "paused")
        producer = upload.producer()
        self.assertEqual(producer.length, UNKNOWN_LENGTH)
        upstream = StringTransport()
        done = producer.startProducing(upstream)
        self.assertEqual(upstream.value(), b"head|" + b"A" * (10 + Upload.hold))
        self.assertEqual(client.producerState, "producing")
        producer.pauseProducing()
        self.assertEqual(client.producerState, "paused")
        producer.resumeProducing()
        upload.feed(b"aa")
        self.assertEqual(upstream.value()[-2:], b"AA")
        self.assertNoResult(done)
        upload.end()
        self.assertEqual(upstream.value()[-4:], b"AAAA")  # the watcher's last word
        self.successResultOf(done)

        upload = Upload(StringTransport(), None)
        watcher = Rewriter(upload, refuse=True)
        upload.watch(watcher)
        upload.feed(b"head|aa")
        done = upload.producer().startProducing(StringTransport())
        upload.end()
        self.assertEqual(self.failureResultOf(done).value.status, 400)


class Rewriter:
    """A watcher that keeps its upload's bytes up to a ``|`` and upper-cases the rest."""

    def __init__(self, upload: Upload, refuse: bool = False) -> None:
        self._upload = upload
        self._refuse = refuse
        self._seen = b""

    def received(self, data: bytes) -> None:
        if b"|" not in self._seen:
            self._seen += data
            if b"|" in self._seen:
                kept = self._seen.index(b"|") + 1
                self._upload.rewrite(kept)
                self._upload.emit(self._seen[kept:].upper())
            return
        self._upload.emit(data.upper())

    def ended(self) -> None:
        if self._refuse:
            raise BadRequest("no end")
        self._upload.emit(b"AA")

    def failed(self, error: Exception) -> None:
        pass
