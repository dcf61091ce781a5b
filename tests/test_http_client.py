"""
The upstream client (`txgateway.http.client`) against scripted servers on loopback sockets:
framing, keep-alive and the pool, bodies streamed both ways with backpressure, cancellation,
failures, and verified TLS.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, ssl
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web._newclient import (
    RequestGenerationFailed,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.client import ResponseDone, readBody
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from txgateway.config import Seconds, UpstreamSettings
from txgateway.http.client import (
    KEPT_UNREAD,
    MAX_HEAD_BYTES,
    BytesProducer,
    ConnectionPool,
    LeanAgent,
)
from txgateway.upstream import TimedBody, UpstreamTimeout


class ServerSide(Protocol):
    """One accepted connection: parses requests (length or chunked bodies) as they come."""

    def connectionMade(self) -> None:
        self.data = b""
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self.factory.bytes_in += len(data)
        while True:
            end = self.data.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.data[:end + 4]
            lower = head.lower()
            rest = self.data[end + 4:]
            if b"transfer-encoding: chunked" in lower:
                last = rest.find(b"0\r\n\r\n")
                if last < 0 or (last and rest[last - 2:last] != b"\r\n"):
                    return
                body, self.data = _unchunk(rest[:last + 5]), rest[last + 5:]
            else:
                length = 0
                if b"content-length:" in lower:
                    length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) < length:
                    return
                body, self.data = rest[:length], rest[length:]
            self.factory.requests.append((head, body))
            self.factory.answer(self, head, body)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


def _unchunk(data: bytes) -> bytes:
    body = b""
    while True:
        size_end = data.find(b"\r\n")
        size = int(data[:size_end], 16)
        if size == 0:
            return body
        body += data[size_end + 2:size_end + 2 + size]
        data = data[size_end + 4 + size:]


class Upstream(Factory):
    """A scripted server: ``answer(connection, head, body)`` writes what it likes."""

    protocol = ServerSide
    noisy = False

    def __init__(self, answer: Callable[[ServerSide, bytes, bytes], None]) -> None:
        self.answer = answer
        self.connections: list[ServerSide] = []
        self.requests: list[tuple[bytes, bytes]] = []
        self.bytes_in = 0


def fixed(body: bytes = b"hello", extra: bytes = b"") -> Callable[..., None]:
    def answer(connection: ServerSide, head: bytes, request_body: bytes) -> None:
        connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + extra
                                   + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return answer


class Collect(Protocol):
    """A body reader that records what it got and how it ended."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.ended: Deferred[Exception] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.ended.callback(reason.value)


@implementer(IBodyProducer)
class Pushed:
    """A body written by the test (``push``, ``finish``, ``fail``), noting pauses."""

    def __init__(self, length: Any) -> None:
        self.length = length
        self.consumer: Any = None
        self.paused = 0
        self.stopped = False
        self.done: Deferred[None] = Deferred()

    def startProducing(self, consumer: Any) -> Deferred[None]:
        self.consumer = consumer
        return self.done

    def push(self, data: bytes) -> None:
        self.consumer.write(data)

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        self.stopped = True


class ClientTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.pool = ConnectionPool(max_idle_per_host=10, clock=self.clock)
        self.agent = LeanAgent(reactor, self.pool, connect_timeout=2)
        self.addCleanup(self.pool.closeCachedConnections)

    def serve(self, answer: Callable[..., None]) -> tuple[Upstream, bytes]:
        upstream = Upstream(answer)
        port = reactor.listenTCP(0, upstream, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [c.transport.abortConnection() for c in upstream.connections
                                         if not c.lost.called])
        return upstream, b"http://127.0.0.1:%d" % port.getHost().port

    async def test_length_body_and_keep_alive(self) -> None:
        """A Content-Length answer; the connection is reused for the next request, whose
        head and bytes body went out in one piece with the agent's Host and framing."""
        upstream, url = self.serve(fixed(extra=b"X-Up: 1\r\nConnection: keep-alive\r\n"))
        headers = Headers({b"x-caller": [b"a", b"b"], b"content-length": [b"99"]})
        for _ in range(2):
            response = await self.agent.request(b"POST", url + b"/v1/x?q=1", headers,
                                                BytesProducer(b'{"a":1}'))
            self.assertEqual((response.code, response.phrase, response.length,
                              response.version), (200, b"OK", 5, (b"HTTP", 1, 1)))
            self.assertEqual(await readBody(response), b"hello")
        self.assertEqual(len(upstream.connections), 1)
        head, body = upstream.requests[0]
        self.assertEqual(body, b'{"a":1}')
        self.assertTrue(head.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n"), head)
        self.assertIn(b"X-Caller: a\r\nX-Caller: b\r\n", head)
        self.assertIn(b"Host: 127.0.0.1:%s\r\n" % url.rsplit(b":", 1)[1], head)
        self.assertEqual(head.lower().count(b"content-length"), 1)
        self.assertIn(b"Content-Length: 7\r\n", head)
        self.assertEqual(response.headers.getRawHeaders(b"x-up"), [b"1"])
        for name in (b"connection", b"content-length"):
            self.assertFalse(response.headers.hasHeader(name))

    async def test_chunked_body_coalesced(self) -> None:
        """A chunked answer's chunks that arrive together reach the reader as one piece."""
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            connection.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")

        upstream, url = self.serve(answer)
        response = await self.agent.request(b"GET", url + b"/")
        self.assertIs(response.length, UNKNOWN_LENGTH)
        reader = Collect()
        response.deliverBody(reader)
        reason = await reader.ended
        self.assertEqual((reader.parts, type(reason)), ([b"abcde"], ResponseDone))
        await self.agent.request(b"GET", url + b"/")
        self.assertEqual(len(upstream.connections), 1)

    async def test_close_delimited_body(self) -> None:
        """No length and no chunks: the body lasts until the server closes, which ends it
        with `PotentialDataLoss` (as Twisted's client does)."""
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            connection.transport.write(b"HTTP/1.1 200 OK\r\n\r\npart one, ")
            reactor.callLater(0.05, connection.transport.write, b"part two")
            reactor.callLater(0.1, connection.transport.loseConnection)

        _, url = self.serve(answer)
        response = await self.agent.request(b"GET", url + b"/")
        reader = Collect()
        response.deliverBody(reader)
        reason = await reader.ended
        self.assertEqual(b"".join(reader.parts), b"part one, part two")
        self.assertIsInstance(reason, PotentialDataLoss)

    async def test_informational_and_head(self) -> None:
        """A 100 Continue is skipped; a HEAD answer has no body whatever its length says."""
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            if head.startswith(b"HEAD"):
                connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n")
            else:
                connection.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                                           b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")

        _, url = self.serve(answer)
        response = await self.agent.request(b"POST", url + b"/", None, BytesProducer(b"x"))
        self.assertEqual((response.code, await readBody(response)), (201, b"ok"))
        response = await self.agent.request(b"HEAD", url + b"/")
        self.assertEqual((response.code, response.length), (200, 0))
        self.assertEqual(await readBody(response), b"")

    async def test_connection_close_and_http10_not_reused(self) -> None:
        for extra, version in ((b"Connection: close\r\n", b"1.1"), (b"", b"1.0")):
            def answer(connection: ServerSide, head: bytes, body: bytes,
                       extra: bytes = extra, version: bytes = version) -> None:
                connection.transport.write(b"HTTP/" + version + b" 200 OK\r\n" + extra
                                           + b"Content-Length: 2\r\n\r\nok")

            upstream, url = self.serve(answer)
            for _ in range(2):
                response = await self.agent.request(b"GET", url + b"/")
                self.assertEqual(await readBody(response), b"ok")
            self.assertEqual(len(upstream.connections), 2, version)

    async def test_pooled_only_once_read_to_the_end(self) -> None:
        """A response still being read keeps its connection; a second request gets its own."""
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
            reactor.callLater(0.1, connection.transport.write, b"cd")

        upstream, url = self.serve(answer)
        first = await self.agent.request(b"GET", url + b"/")
        second = await self.agent.request(b"GET", url + b"/")
        self.assertEqual(len(upstream.connections), 2)
        self.assertEqual([await readBody(first), await readBody(second)], [b"abcd", b"abcd"])
        await readBody(await self.agent.request(b"GET", url + b"/"))
        self.assertEqual(len(upstream.connections), 2)

    async def test_stopped_body_closes_its_connection(self) -> None:
        """A reader that stops the body closes the connection; it is never reused, and a
        stop after the body was over does not touch the next request's connection."""
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            if head.startswith(b"GET /endless"):
                connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\n"
                                           b"some")
            else:
                connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

        upstream, url = self.serve(answer)
        response = await self.agent.request(b"GET", url + b"/endless")
        reader = Collect()
        response.deliverBody(reader)
        while not reader.parts:
            await deferLater(reactor, 0.01)
        reader.transport.stopProducing()
        reason = await reader.ended
        self.assertIsInstance(reason, ResponseFailed)
        await upstream.connections[0].lost
        done = await self.agent.request(b"GET", url + b"/small")
        done_reader = Collect()
        done.deliverBody(done_reader)
        await done_reader.ended
        second = await self.agent.request(b"GET", url + b"/small")
        done_reader.transport.stopProducing()  # late: the connection is another request's
        self.assertEqual(await readBody(second), b"ok")
        self.assertEqual(len(upstream.connections), 2)

    def serve_endless(self) -> tuple[list[int], bytes]:
        """A server writing a body as fast as it is read; the pieces it wrote."""
        written: list[int] = []

        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n"
                                       % (64 * 1024 * 1024))

            @implementer(IPullProducer)
            class Endless:
                def resumeProducing(self) -> None:
                    written.append(65536)
                    connection.transport.write(bytes(65536))

                def stopProducing(self) -> None:
                    pass

            connection.transport.registerProducer(Endless(), False)

        _, url = self.serve(answer)
        return written, url

    async def wait_blocked(self, written: list[int]) -> int:
        """Until the server has stopped writing (nobody reads); what it wrote."""
        sent = -1
        while sent != len(written):
            sent = len(written)
            await deferLater(reactor, 0.2)
        self.assertLess(sent * 65536, 32 * 1024 * 1024)
        return sent

    async def test_paused_body_stops_reading(self) -> None:
        """Pausing the body's transport stops reading the upstream: its writes back up."""
        written, url = self.serve_endless()
        response = await self.agent.request(b"GET", url + b"/")
        reader = Collect()
        response.deliverBody(reader)
        reader.transport.pauseProducing()
        sent = await self.wait_blocked(written)
        reader.transport.resumeProducing()
        while len(written) < sent + 10:
            await deferLater(reactor, 0.01)
        reader.transport.stopProducing()
        await reader.ended

    async def test_unread_body_bounded(self) -> None:
        """A response whose body nobody reads yet holds a bounded part of it (the connection
        is paused), all handed over once a reader comes."""
        written, url = self.serve_endless()
        response = await self.agent.request(b"GET", url + b"/")
        await self.wait_blocked(written)
        self.assertLess(sum(len(part) for part in response._kept), 2 * KEPT_UNREAD)
        reader = Collect()
        response.deliverBody(reader)
        while sum(map(len, reader.parts)) < 10 * KEPT_UNREAD:
            await deferLater(reactor, 0.01)
        reader.transport.stopProducing()
        await reader.ended

    async def test_cancel_aborts(self) -> None:
        """Cancelling the request's Deferred while waiting for the answer closes the
        connection at once."""
        upstream, url = self.serve(lambda connection, head, body: None)
        waiting = self.agent.request(b"POST", url + b"/", None, BytesProducer(b"x"))
        while not upstream.requests:
            await deferLater(reactor, 0.01)
        waiting.cancel()
        with self.assertRaises(CancelledError):
            await waiting
        await upstream.connections[0].lost

    async def test_never_resent(self) -> None:
        """A connection lost before any answer fails the request; it is not sent again."""
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            connection.transport.loseConnection()

        upstream, url = self.serve(answer)
        with self.assertRaises(ResponseNeverReceived):
            await self.agent.request(b"POST", url + b"/", None, BytesProducer(b"x"))
        self.assertEqual(len(upstream.requests), 1)

    async def test_idle_connection_closed_by_server_dropped(self) -> None:
        """A pooled connection the server closed while idle is not used again."""
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            fixed(b"ok")(connection, head, body)
            reactor.callLater(0.02, connection.transport.loseConnection)

        upstream, url = self.serve(answer)
        for _ in range(2):
            response = await self.agent.request(b"GET", url + b"/")
            self.assertEqual(await readBody(response), b"ok")
            await deferLater(reactor, 0.1)
        self.assertEqual(len(upstream.connections), 2)

    async def test_long_idle_connection_not_used(self) -> None:
        """A connection idle past the pool's expiry is closed, and a new one used."""
        upstream, url = self.serve(fixed(b"ok"))
        for wait in (self.pool.idle_expiry - 1, self.pool.idle_expiry + 1):
            self.assertEqual(await readBody(await self.agent.request(b"GET", url + b"/")), b"ok")
            self.clock.advance(wait)
        self.assertEqual(len(upstream.connections), 1)
        self.assertEqual(await readBody(await self.agent.request(b"GET", url + b"/")), b"ok")
        self.assertEqual(len(upstream.connections), 2)
        await upstream.connections[0].lost

    async def test_unsolicited_bytes_drop_the_connection(self) -> None:
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            fixed(b"ok")(connection, head, body)
            if len(upstream.connections) == 1:
                reactor.callLater(0.02, connection.transport.write, b"HTTP/1.1 200 OK\r\n")

        upstream, url = self.serve(answer)
        response = await self.agent.request(b"GET", url + b"/")
        self.assertEqual(await readBody(response), b"ok")
        await upstream.connections[0].lost
        response = await self.agent.request(b"GET", url + b"/")
        self.assertEqual(await readBody(response), b"ok")
        self.assertEqual(len(upstream.connections), 2)

    async def test_malformed_answer(self) -> None:
        upstream, url = self.serve(
            lambda connection, head, body: connection.transport.write(b"HTTP/1.1 2x0 OK\r\n\r\n"))
        with self.assertRaises(ResponseFailed):
            await self.agent.request(b"GET", url + b"/")
        await upstream.connections[0].lost

    async def test_endless_head_refused(self) -> None:
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            connection.transport.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
            for _ in range(MAX_HEAD_BYTES // 65536 + 2):
                connection.transport.write(b"x" * 65536)

        upstream, url = self.serve(answer)
        with self.assertRaises(ResponseFailed) as raised:
            await self.agent.request(b"GET", url + b"/")
        self.assertIn("head exceeds", str(raised.exception.reasons[0].value))
        await upstream.connections[0].lost

    async def test_body_cut_short(self) -> None:
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            connection.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            reactor.callLater(0.02, connection.transport.loseConnection)

        _, url = self.serve(answer)
        response = await self.agent.request(b"GET", url + b"/")
        reader = Collect()
        response.deliverBody(reader)
        self.assertIsInstance(await reader.ended, ResponseFailed)
        self.assertEqual(reader.parts, [b"abc"])

    async def test_invalid_requests_refused(self) -> None:
        """A URL or method that would break the request line (a model name with a CRLF in
        a provider's URL, say) is refused before anything is sent."""
        upstream, url = self.serve(fixed())
        for method, target in ((b"POST", url + b"/v1/models/x\r\nX-Injected: 1"),
                               (b"POST", url + b"/a b"), (b"GET\r\n", url + b"/"),
                               (b"GET", b"/relative"), (b"GET", url + b"/caf\xc3\xa9"),
                               (b"GET", b"ftp://127.0.0.1/"), (b"GET", b"http:///x")):
            with self.assertRaises(ValueError):
                await self.agent.request(method, target)
        self.assertEqual(upstream.connections, [])
        response = await self.agent.request(b"GET", url + b"/ok?q=1#fragment")
        self.assertEqual(await readBody(response), b"hello")
        self.assertTrue(upstream.requests[0][0].startswith(b"GET /ok?q=1 HTTP/1.1\r\n"))

    async def test_refused(self) -> None:
        _, url = self.serve(fixed())
        port = int(url.rsplit(b":", 1)[1])
        url = b"http://127.0.0.1:%d/" % (port + 1 if port < 65535 else port - 1)
        with self.assertRaises(ConnectError):
            await self.agent.request(b"GET", url)

    async def test_streamed_bodies(self) -> None:
        """An ``IBodyProducer`` body goes out as it is written: with its length as is,
        without chunked; the request is answered once it is whole."""
        upstream, url = self.serve(fixed(b"ok"))
        for length in (10, UNKNOWN_LENGTH):
            producer = Pushed(length)
            waiting = self.agent.request(b"PUT", url + b"/up", None, producer)
            while producer.consumer is None:
                await deferLater(reactor, 0.01)
            producer.push(b"01234")
            await deferLater(reactor, 0.02)
            self.assertEqual(upstream.requests[1:] if length == 10 else upstream.requests[2:], [])
            producer.push(b"56789")
            producer.done.callback(None)
            response = await waiting
            self.assertEqual(await readBody(response), b"ok")
        [(length_head, length_body), (chunked_head, chunked_body)] = upstream.requests
        self.assertIn(b"Content-Length: 10\r\n", length_head)
        self.assertIn(b"Transfer-Encoding: chunked\r\n", chunked_head)
        self.assertEqual((length_body, chunked_body), (b"0123456789", b"0123456789"))
        self.assertEqual(len(upstream.connections), 1)

    async def test_upload_backpressure(self) -> None:
        """While the upstream reads nothing, the producer is paused."""
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            fixed(b"ok")(connection, head, body)

        upstream, url = self.serve(answer)
        producer = Pushed(UNKNOWN_LENGTH)
        waiting = self.agent.request(b"POST", url + b"/", None, producer)
        while producer.consumer is None or not upstream.connections:
            await deferLater(reactor, 0.01)
        upstream.connections[0].transport.pauseProducing()
        for _ in range(400):
            producer.push(bytes(65536))
            if producer.paused:
                break
        self.assertTrue(producer.paused)
        upstream.connections[0].transport.resumeProducing()
        producer.done.callback(None)
        response = await waiting
        self.assertEqual(await readBody(response), b"ok")

    async def test_producer_failures(self) -> None:
        """A producer that fails, or writes the wrong length, fails the request with
        `RequestGenerationFailed` and closes the connection."""
        upstream, url = self.serve(fixed(b"ok"))
        for failing in ("error", "long", "short"):
            producer = Pushed(4)
            waiting = self.agent.request(b"POST", url + b"/", None, producer)
            while producer.consumer is None:
                await deferLater(reactor, 0.01)
            if failing == "error":
                producer.done.errback(ValueError("the client left"))
            elif failing == "long":
                producer.push(b"12345")
            else:
                producer.push(b"123")
                producer.done.callback(None)
            with self.assertRaises(RequestGenerationFailed) as raised:
                await waiting
            if failing == "error":
                self.assertIsInstance(raised.exception.reasons[0].value, ValueError)
        self.assertEqual(len(upstream.connections), 3)
        for connection in upstream.connections:
            await connection.lost

    async def test_connection_lost_mid_upload(self) -> None:
        """The upstream cuts the connection while the body is sent: the request fails
        with `RequestTransmissionFailed` and the producer is stopped."""
        upstream, url = self.serve(fixed())
        producer = Pushed(UNKNOWN_LENGTH)
        waiting = self.agent.request(b"POST", url + b"/", None, producer)
        while producer.consumer is None or not upstream.connections:
            await deferLater(reactor, 0.01)
        producer.push(b"first")
        upstream.connections[0].transport.abortConnection()
        with self.assertRaises(RequestTransmissionFailed):
            await waiting
        self.assertTrue(producer.stopped)

    async def test_answer_before_upload_ends(self) -> None:
        """An answer that comes whole before the request body: the producer is stopped and
        the connection closed (it is out of step)."""
        def early(connection: ServerSide) -> None:
            connection.transport.write(b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\n\r\nno")

        upstream, url = self.serve(fixed())
        producer = Pushed(UNKNOWN_LENGTH)
        waiting = self.agent.request(b"POST", url + b"/", None, producer)
        while producer.consumer is None or not upstream.connections:
            await deferLater(reactor, 0.01)
        producer.push(b"first")
        early(upstream.connections[0])
        response = await waiting
        self.assertEqual((response.code, await readBody(response)), (413, b"no"))
        self.assertTrue(producer.stopped)
        await upstream.connections[0].lost

    async def test_pool_bound_and_close(self) -> None:
        """At most ``max_idle_per_host`` idle connections are kept; `closeCachedConnections`
        closes them and fires once they are closed."""
        self.pool.max_idle_per_host = 1
        def answer(connection: ServerSide, head: bytes, body: bytes) -> None:
            reactor.callLater(0.02, fixed(b"ok"), connection, head, body)

        upstream, url = self.serve(answer)
        responses = [await waiting for waiting in
                     [self.agent.request(b"GET", url + b"/") for _ in range(2)]]
        for response in responses:
            await readBody(response)
        await upstream.connections[0].lost  # the older of the two idle ones
        await self.pool.closeCachedConnections()
        await upstream.connections[1].lost


def _certificate() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (certificate.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


class TrustOnly:
    """A TLS policy that trusts one certificate (the test's own authority)."""

    def __init__(self, pem: bytes) -> None:
        self._root = ssl.Certificate.loadPEM(pem)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return ssl.optionsForClientTLS(hostname.decode(), trustRoot=self._root)


class TLSTests(TestCase):
    def setUp(self) -> None:
        certificate, key = _certificate()
        self.certificate = certificate
        self.upstream = Upstream(fixed(b"secure"))
        options = ssl.PrivateCertificate.loadPEM(key + certificate).options()
        port = reactor.listenSSL(0, self.upstream, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(lambda: [c.transport.abortConnection()
                                 for c in self.upstream.connections if not c.lost.called])
        self.url = b"https://localhost:%d/" % port.getHost().port

    async def test_verified_and_reused(self) -> None:
        pool = ConnectionPool(max_idle_per_host=10, clock=reactor)
        self.addCleanup(pool.closeCachedConnections)
        agent = LeanAgent(reactor, pool, 2, TrustOnly(self.certificate))
        for _ in range(2):
            response = await agent.request(b"GET", self.url)
            self.assertEqual(await readBody(response), b"secure")
        self.assertEqual(len(self.upstream.connections), 1)
        self.assertIn(b"Host: localhost:", self.upstream.requests[0][0])

    async def test_unknown_authority_refused(self) -> None:
        """The default policy verifies certificates: a self-signed one is refused."""
        pool = ConnectionPool(max_idle_per_host=10, clock=reactor)
        agent = LeanAgent(reactor, pool, 2)
        with self.assertRaises(Exception) as raised:
            await agent.request(b"GET", self.url)
        self.assertIn("certificate verify failed", repr(raised.exception))
        self.assertEqual(self.upstream.requests, [])


class StillTransport:
    """A body's transport that records being stopped, paused and resumed."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def stopProducing(self) -> None:
        self.calls.append("stop")

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")


class Kept(TimedBody):
    def received(self, data: bytes) -> None:
        pass

    def ended(self, failure: Failure | None) -> None:
        pass


class TimedBodyTests(SynchronousTestCase):
    """The idle timer: reads keep it off, silence past the timeout (not while paused) stops
    the body."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.body = Kept(self.clock, UpstreamSettings(idle_timeout=Seconds(0.5)))
        self.transport = StillTransport()
        self.body.makeConnection(self.transport)

    def test_reads_within_the_timeout(self) -> None:
        for _ in range(5):
            self.clock.advance(0.4)
            self.body.dataReceived(b"x")
        self.clock.advance(0.45)
        self.assertEqual(self.transport.calls, [])
        self.clock.advance(0.1)
        self.assertEqual(self.transport.calls, ["stop"])
        self.assertIsInstance(self.body._stop_reason, UpstreamTimeout)

    def test_paused_silence_is_no_stall(self) -> None:
        self.body.pauseProducing()
        self.clock.advance(5)
        self.body.resumeProducing()
        self.clock.advance(0.4)
        self.assertEqual(self.transport.calls, ["pause", "resume"])
        self.clock.advance(0.2)
        self.assertEqual(self.transport.calls, ["pause", "resume", "stop"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
