"""
End to end: the faults of a translated stream, both ways (the openai SDK to an Anthropic
upstream, the anthropic SDK to an OpenAI one): a client that leaves, a client that stops
reading.
"""

from __future__ import annotations

from typing import Any

import orjson
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater

from tests.fake_openai import BigStream, FakeUpstream
from tests.test_chat import MESSAGES, _Stalled
from tests.test_messages import MessagesTestCase


def read_one_then_leave(stream: Any) -> Any:
    """Read the first event of an SDK stream, then close it: the client hangs up."""
    with stream:
        return next(iter(stream))


class TranslatedStreamTests(MessagesTestCase):
    async def check_abandoned(self, fake: FakeUpstream, model: str, start: Any) -> None:
        """The upstream is aborted at once when the client leaves; estimated usage recorded."""
        first = await self.sdk(lambda: read_one_then_leave(start()))
        self.assertIsNotNone(first)
        await self.check_upstream_dropped(fake, model)

    async def test_openai_caller_leaves_anthropic_stream(self) -> None:
        await self.check_abandoned(self.claude, "claude-slow-stream", lambda: (
            self.client.chat.completions.create(model="claude-slow-stream", messages=MESSAGES,
                                                stream=True)))

    async def test_anthropic_caller_leaves_openai_stream(self) -> None:
        await self.check_abandoned(self.fake, "slow-stream", lambda: (
            self.anthropic.messages.create(model="slow-stream", max_tokens=10,
                                           messages=MESSAGES, stream=True)))

    async def check_paused(self, fake: FakeUpstream, path: bytes, body: dict[str, Any],
                           end: bytes) -> None:
        """
        While the client reads nothing the upstream is paused, so the gateway buffers no
        more than the sockets do; when it reads again, the whole stream arrives.
        """
        raw = orjson.dumps(body)
        port = int(self.base_url.rsplit(":", 1)[1])
        client = _Stalled(b"POST %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path, len(raw), raw))
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        await deferLater(reactor, 1.0)
        self.assertGreater(fake.big_stream_pauses, 0)
        self.assertLess(fake.big_stream_bytes, 24 * 1024 * 1024)
        client.transport.resumeProducing()
        received = await client.done
        self.assertIn(end, received[-300:])
        self.assertGreaterEqual(fake.big_stream_bytes, BigStream.total)

    async def test_openai_caller_pauses_anthropic_stream(self) -> None:
        await self.check_paused(self.claude, b"/v1/chat/completions", {
            "model": "claude-big-stream", "messages": MESSAGES, "stream": True},
            b"data: [DONE]\n\n")

    async def test_anthropic_caller_pauses_openai_stream(self) -> None:
        await self.check_paused(self.fake, b"/v1/messages", {
            "model": "big-stream", "max_tokens": 10, "messages": MESSAGES, "stream": True},
            b"event: message_stop\n")
