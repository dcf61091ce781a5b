"""The lean HTTP/1.1 server (`txgateway.http.server`), through raw loopback sockets."""

from __future__ import annotations

from typing import Any

import orjson
from httptools import HttpResponseParser
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface.verify import verifyObject

from tests.gateway_harness import GatewayTestCase
from txgateway.http import IGatewayRequest
from txgateway.http.server import HTTPServer


class Echo(Resource):
    """Answers with what it was asked, in JSON."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return orjson.dumps({
            "method": request.method.decode(), "path": request.path.decode(),
            "args": {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()},
            "body": request.content.getvalue().decode(),
            "header": (request.getHeader(b"x-test") or b"").decode(),
        })


class Later(Resource):
    """Answers when the test says (``answer``); remembers how each request ended."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Any] = []
        self.ended: list[Any] = []

    def render(self, request: Any) -> Any:
        self.waiting.append(request)
        request.notifyFinish().addBoth(self.ended.append)
        return NOT_DONE_YET

    def answer(self, body: bytes) -> None:
        request = self.waiting.pop(0)
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()


class Stream(Resource):
    """Writes its answer in three pieces, with no Content-Length."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        for piece in (b"one ", b"", b"two ", b"three"):
            request.write(piece)
        request.finish()
        return NOT_DONE_YET


class Fixed(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"0123456789"


class Boom(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        raise RuntimeError("boom")


class Streamed(Resource):
    """A streamed upload path: answers 400 at the first chunk, before the body is all in."""

    isLeaf = True
    streams_upload = True

    def render(self, request: Any) -> Any:
        upload = request.upload

        class Watcher:
            def received(self, data: bytes) -> None:
                if not request.finished:
                    request.setResponseCode(400)
                    request.setHeader(b"content-length", b"%d" % upload.received)
                    request.write(b"x" * upload.received)
                    request.finish()

            def ended(self) -> None:
                pass

            def failed(self, error: Exception) -> None:
                pass

        upload.watch(Watcher())
        return NOT_DONE_YET


class Paused(Resource):
    """Stops reading the client (as an upload's upstream backpressure does) for a while."""

    isLeaf = True
    streams_upload = True

    def render(self, request: Any) -> Any:
        transport = request.channel.transport
        transport.pauseProducing()

        def resume() -> None:
            transport.resumeProducing()
            request.setHeader(b"content-length", b"2")
            request.write(b"ok")
            request.finish()

        reactor.callLater(0.5, resume)
        return NOT_DONE_YET


class Twisted(Resource):
    """What an upgrade reaches: twisted.web's own request, on an ``HTTPChannel``."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        channel = "HTTPChannel" if isinstance(request.channel, HTTPChannel) else "other"
        return b"%s %s %s" % (channel.encode(), request.getHeader(b"upgrade") or b"-", request.uri)


class TakesConnection(Twisted):
    takes_connection = True


class RawClient(Protocol):
    """Writes what it is told; parses every answer it reads (status, headers, body)."""

    def __init__(self) -> None:
        self.data = b""
        self.answers: list[tuple[int, dict[bytes, bytes], bytes]] = []
        self.lost = False
        self._parser = HttpResponseParser(self)
        self._headers: dict[bytes, bytes] = {}
        self._body = b""

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        self._parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self.answers.append((self._parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


class HTTPServerTests(TestCase):
    def setUp(self) -> None:
        root = Resource()
        self.later = Later()
        for name, child in ((b"echo", Echo()), (b"later", self.later), (b"stream", Stream()),
                            (b"boom", Boom()), (b"fixed", Fixed()), (b"streamed", Streamed()),
                            (b"twisted", Twisted()), (b"ws", TakesConnection()),
                            (b"paused", Paused())):
            root.putChild(name, child)
        self.server = HTTPServer(root, max_body_bytes=1000, reactor=reactor)
        self.server.sweep_interval = 0.05
        self.port = reactor.listenTCP(0, self.server, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    def tearDown(self) -> Deferred[None]:
        return self.server.close_connections()

    async def connect(self) -> RawClient:
        client = RawClient()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        await connectProtocol(endpoint, client)
        self.addCleanup(lambda: client.transport.abortConnection())
        return client

    async def until(self, condition: Any, seconds: float = 5.0) -> None:
        for _ in range(int(seconds / 0.01)):
            if condition():
                return
            await deferLater(reactor, 0.01)
        self.fail("waited in vain")

    async def ask(self, client: RawClient, raw: bytes, answers: int = 1) -> Any:
        expected = len(client.answers) + answers
        client.transport.write(raw)
        await self.until(lambda: len(client.answers) >= expected or client.lost)
        return client.answers[-1]

    async def test_keep_alive(self) -> None:
        """Requests follow one another on one connection, which stays open."""
        client = await self.connect()
        for n in range(3):
            status, headers, body = await self.ask(
                client, b"GET /echo?n=%d&n=x HTTP/1.1\r\nHost: h\r\nX-Test: t\r\n\r\n" % n)
            self.assertEqual(status, 200)
            self.assertEqual(orjson.loads(body), {
                "method": "GET", "path": "/echo", "args": {"n": [str(n), "x"]}, "body": "",
                "header": "t"})
            self.assertIn(b"date", headers)
        self.assertFalse(client.lost)

    async def test_pipelining_answers_in_order(self) -> None:
        """Pipelined requests are answered in order; the second waits for the first."""
        client = await self.connect()
        client.transport.write(b"GET /later HTTP/1.1\r\nHost: h\r\n\r\n"
                               b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"
                               b"GET /later HTTP/1.1\r\nHost: h\r\n\r\n")
        await self.until(lambda: self.later.waiting)
        await deferLater(reactor, 0.05)
        self.assertEqual(client.answers, [])
        self.later.answer(b"first")
        await self.until(lambda: len(client.answers) == 2 and self.later.waiting)
        self.later.answer(b"third")
        await self.until(lambda: len(client.answers) == 3)
        self.assertEqual([a[2] for a in client.answers[::2]], [b"first", b"third"])
        self.assertEqual(orjson.loads(client.answers[1][2])["body"], "hi")

    async def test_chunked_both_ways(self) -> None:
        """A chunked request body is read whole; an answer without a length is chunked."""
        client = await self.connect()
        _, _, body = await self.ask(
            client, b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n")
        self.assertEqual(orjson.loads(body)["body"], "abcde")
        status, headers, body = await self.ask(client, b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual((status, headers[b"transfer-encoding"], body),
                         (200, b"chunked", b"one two three"))
        self.assertFalse(client.lost)

    async def test_expect_100_continue(self) -> None:
        """The client is told to go on before it sends the body."""
        client = await self.connect()
        client.transport.write(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n"
                               b"Expect: 100-continue\r\n\r\n")
        await self.until(lambda: b"\r\n\r\n" in client.data)
        self.assertEqual(client.data, b"HTTP/1.1 100 Continue\r\n\r\n")
        _, _, body = await self.ask(client, b"body")
        self.assertEqual(orjson.loads(body)["body"], "body")

    async def test_head(self) -> None:
        """HEAD: the headers GET would have, no body; the connection goes on."""
        client = await self.connect()
        client.transport.write(b"HEAD /fixed HTTP/1.1\r\nHost: h\r\n\r\n")
        await self.until(lambda: b"\r\n\r\n" in client.data)
        await deferLater(reactor, 0.05)
        head, _, rest = client.data.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: 10", head)
        self.assertEqual(rest, b"")
        client.data = b""
        client._parser = HttpResponseParser(client)
        status, _, body = await self.ask(client, b"GET /fixed HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual((status, body), (200, b"0123456789"))

    async def test_http_1_0_closes(self) -> None:
        client = await self.connect()
        status, headers, _ = await self.ask(client, b"GET /echo HTTP/1.0\r\n\r\n")
        self.assertEqual((status, headers[b"connection"]), (200, b"close"))
        await self.until(lambda c=client: c.lost)

    async def test_oversized_head_431(self) -> None:
        """Headers over the limit (whole or trickled) are answered 431, then the end."""
        for pieces in ([b"GET /echo HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"],
                       [b"GET /echo HTTP/1.1\r\n"] + [b"X-A: %s\r\n" % (b"b" * 900)] * 20):
            client = await self.connect()
            for piece in pieces:
                client.transport.write(piece)
                await deferLater(reactor, 0.001)
            await self.until(lambda c=client: c.lost)
            self.assertEqual(client.answers[0][0], 431)

    async def test_oversized_body_413(self) -> None:
        """A body over the limit, by its length or as it comes chunked: 413, then closed."""
        for raw in (b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 1001\r\n\r\n",
                    b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    + b"1f4\r\n" + b"x" * 500 + b"\r\n" + b"1f5\r\n" + b"x" * 501 + b"\r\n"):
            client = await self.connect()
            status, headers, body = await self.ask(client, raw)
            self.assertEqual((status, headers[b"connection"]), (413, b"close"))
            self.assertEqual(orjson.loads(body)["error"]["code"], "request_too_large")
            self.assertFalse(client.lost)  # the rest of the body is read, and dropped
            client.transport.write(b"x" * 1001 if b"Content-Length" in raw else b"0\r\n\r\n")
            await self.until(lambda c=client: c.lost)
            self.assertEqual(len(client.answers), 1)

    async def test_malformed_400_disturbs_nothing_else(self) -> None:
        """A malformed request is answered 400 and closed; another connection goes on."""
        other = await self.connect()
        other.transport.write(b"GET /later HTTP/1.1\r\nHost: h\r\n\r\n")
        await self.until(lambda: self.later.waiting)
        for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
                        b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\nNOT HTTP\r\n\r\n"):
            client = await self.connect()
            client.transport.write(garbage)
            await self.until(lambda c=client: c.lost)
            self.assertEqual(client.answers[-1][0], 400)
        self.later.answer(b"fine")
        await self.until(lambda: other.answers)
        self.assertEqual(other.answers[0][2], b"fine")
        self.assertFalse(other.lost)

    async def test_absurd_chunk_size_400_at_once(self) -> None:
        """A chunk size of 80 bits is refused at once, not after a timeout (issue 19)."""
        client = await self.connect()
        client.transport.write(b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
                               b"\r\n\r\nffffffffffffffffffff\r\n")
        await self.until(lambda: client.lost, seconds=0.5)
        self.assertEqual(client.answers[0][0], 400)

    async def test_trickled_head_times_out(self) -> None:
        """A head trickled a header at a time is cut off at the header timeout."""
        self.server.header_timeout = 0.3
        client = await self.connect()
        client.transport.write(b"GET /echo HTTP/1.1\r\n")
        for _ in range(20):
            if client.lost:
                break
            client.transport.write(b"X-A: b\r\n")
            await deferLater(reactor, 0.05)
        self.assertTrue(client.lost)
        self.assertEqual(client.answers, [])

    async def test_stalled_body_and_idle_connection_time_out(self) -> None:
        self.server.body_timeout = self.server.idle_timeout = 0.2
        client = await self.connect()
        client.transport.write(b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nab")
        await self.until(lambda: client.lost, seconds=1)
        client = await self.connect()
        await self.ask(client, b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n")
        await self.until(lambda: client.lost, seconds=1)
        self.assertEqual(len(client.answers), 1)

    async def test_body_the_gateway_stopped_reading_has_no_timeout(self) -> None:
        self.server.body_timeout = 0.1
        client = await self.connect()
        status, _, _ = await self.ask(client, b"POST /paused HTTP/1.1\r\nHost: h\r\n"
                                              b"Content-Length: 10\r\n\r\nab")
        self.assertEqual(status, 200)
        client.transport.write(b"c" * 8)
        await self.ask(client, b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertFalse(client.lost)

    async def test_waiting_on_an_answer_has_no_timeout(self) -> None:
        self.server.body_timeout = self.server.idle_timeout = self.server.header_timeout = 0.1
        client = await self.connect()
        client.transport.write(b"GET /later HTTP/1.1\r\nHost: h\r\n\r\n")
        await deferLater(reactor, 0.4)
        self.later.answer(b"late")
        await self.until(lambda: client.answers)
        self.assertEqual(client.answers[0][2], b"late")

    async def test_client_disconnect_fails_notify_finish(self) -> None:
        client = await self.connect()
        client.transport.write(b"GET /later HTTP/1.1\r\nHost: h\r\n\r\n")
        await self.until(lambda: self.later.waiting)
        self.assertTrue(verifyObject(IGatewayRequest, self.later.waiting[0]))
        client.transport.abortConnection()
        await self.until(lambda: self.later.ended)
        self.assertTrue(hasattr(self.later.ended[0], "check"))  # a Failure
        request = self.later.waiting[0]
        request.write(b"dropped")  # writes after the client left are dropped
        self.assertRaises(RuntimeError, request.finish)

    async def test_render_failure_500(self) -> None:
        client = await self.connect()
        status, _, body = await self.ask(client, b"GET /boom HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual((status, orjson.loads(body)["error"]["code"]), (500, "internal_error"))
        self.flushLoggedErrors(RuntimeError)

    async def test_streamed_upload_answered_early(self) -> None:
        """A streamed path renders at its headers; answered before the body ends, the rest
        is dropped and the connection goes on in step."""
        client = await self.connect()
        status, _, _ = await self.ask(
            client, b"POST /streamed HTTP/1.1\r\nHost: h\r\nContent-Length: 600\r\n\r\n"
                    + b"y" * 100)
        self.assertEqual(status, 400)
        client.transport.write(b"y" * 500 + b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n")
        await self.until(lambda: len(client.answers) == 2)
        self.assertEqual(client.answers[1][0], 200)

    async def test_upgrade_handed_to_twisted_web(self) -> None:
        """An Upgrade request (after another on the same connection) reaches twisted.web's
        channel whole."""
        client = await self.connect()
        await self.ask(client, b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, body = await self.ask(
            client, b"GET /twisted?q=1 HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                    b"Upgrade: websocket\r\n\r\n")
        self.assertEqual((status, body), (200, b"HTTPChannel websocket /twisted?q=1"))
        self.assertEqual(self.server._transports, set())
        self.assertEqual(len(self.server.upgrades._transports), 1)

    async def test_upgrade_behind_an_unanswered_request_waits(self) -> None:
        """Pipelined behind a request still being answered, an upgrade is handed over only
        once that answer is out."""
        client = await self.connect()
        client.transport.write(b"GET /later HTTP/1.1\r\nHost: h\r\n\r\n"
                               b"GET /twisted HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
                               b"Upgrade: websocket\r\n\r\n")
        await self.until(lambda: self.later.waiting)
        await deferLater(reactor, 0.05)
        self.assertEqual(self.server.upgrades._transports, set())
        self.later.answer(b"first")
        await self.until(lambda: len(client.answers) == 2)
        self.assertEqual([a[2] for a in client.answers],
                         [b"first", b"HTTPChannel websocket /twisted"])

    async def test_websocket_path_handed_over_without_upgrade(self) -> None:
        """A resource that takes the connection gets it, Upgrade or not (Autobahn refuses
        a plain GET itself)."""
        client = await self.connect()
        status, _, body = await self.ask(client, b"GET /ws HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual((status, body), (200, b"HTTPChannel - /ws"))

    async def test_websocket_path_with_a_body_is_answered_and_closed(self) -> None:
        """Found by the wire fuzz: a plain request with a body to a WebSocket path was handed
        over with its Content-Length and no body, and twisted.web waited for it for good."""
        client = await self.connect()
        status, _, body = await self.ask(
            client, b"POST /ws HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual((status, body), (200, b"HTTPChannel - /ws"))
        await self.until(lambda c=client: c.lost)

    async def test_close_connections(self) -> None:
        client = await self.connect()
        await self.ask(client, b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n")
        await self.server.close_connections()
        await self.until(lambda c=client: c.lost)



class GatewayServerTests(GatewayTestCase):
    """The server as the gateway runs it."""

    async def connect(self) -> RawClient:
        client = RawClient()
        port = int(self.base_url.rsplit(":", 1)[1])
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        self.addCleanup(lambda: client.transport.abortConnection())
        return client

    async def test_absurd_chunk_size(self) -> None:
        """Issue 19's fuzz case: 400 and closed at once; the gateway goes on serving."""
        client = await self.connect()
        client.transport.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
                               b"Authorization: Bearer sk-caller\r\n"
                               b"Content-Type: application/json\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n")
        for _ in range(100):
            if client.lost:
                break
            await deferLater(reactor, 0.01)
        self.assertTrue(client.lost)
        self.assertEqual(client.answers[0][0], 400)
        other = await self.connect()
        other.transport.write(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
        for _ in range(100):
            if other.answers:
                break
            await deferLater(reactor, 0.01)
        self.assertEqual(other.answers[0][0], 200)
