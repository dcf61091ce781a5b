"""
The upstream client's own cost: CPU per proxied call, Twisted's ``Agent`` and pool against
`txgateway.http.client`, both driven the way the gateway drives them (`UpstreamCall`: send,
then read the body whole, or relay a stream event by event through an `EventSplitter`).

The fake upstream (`bench/fake_upstream.py`) runs in its own process; only this process's CPU
(user + system, ``getrusage``) is counted, over a fixed number of calls after a warm-up.

    /work/venv/bin/python bench/client.py [--requests 4000] [--concurrency 1] [--chunks 20]
                                          [--chunk-delay 0]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import HostnameEndpoint
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from txgateway.config import UpstreamSettings  # noqa: E402
from txgateway.providers import UpstreamRequest  # noqa: E402
from txgateway.streams import EventSplitter, events  # noqa: E402
from txgateway.upstream import TimedBody, UpstreamCall, pooled_agent  # noqa: E402

BODY = (b'{"model":"bench-model","messages":[{"role":"user","content":"'
        + b"Say something short. " * 40 + b'"}]%s}')
HEADERS = Headers({b"content-type": [b"application/json"],
                   b"authorization": [b"Bearer sk-bench-0000000000000000"]})


@implementer(IAgentEndpointFactory)
class CachedEndpoints:
    """What the gateway's Twisted agent had: one endpoint per host, Nagle off."""

    def __init__(self) -> None:
        self._endpoints: dict[Any, Any] = {}

    def endpointForURI(self, uri: Any) -> Any:
        key = (uri.host, uri.port)
        if key not in self._endpoints:
            self._endpoints[key] = NoDelay(HostnameEndpoint(reactor, uri.host, uri.port))
        return self._endpoints[key]


class NoDelay:
    def __init__(self, endpoint: Any) -> None:
        self._endpoint = endpoint

    def connect(self, factory: Any) -> Deferred[Any]:
        def no_delay(protocol: Any) -> Any:
            protocol.transport.setTcpNoDelay(True)
            return protocol
        return self._endpoint.connect(factory).addCallback(no_delay)


def twisted_agent(settings: UpstreamSettings) -> tuple[Any, Any]:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = settings.max_idle_connections_per_host
    pool.retryAutomatically = False
    return Agent.usingEndpointFactory(reactor, CachedEndpoints(), pool=pool), pool


class CountEvents(TimedBody):
    """A stream relay without a client: splits the events and counts them."""

    def __init__(self, settings: UpstreamSettings) -> None:
        super().__init__(reactor, settings)
        self._splitter = EventSplitter()
        self.count = 0
        self.done: Deferred[int] = Deferred()

    def received(self, data: bytes) -> None:
        self.count += len(events(self._splitter.feed(data)))

    def ended(self, failure: Failure | None) -> None:
        if failure is None:
            self.done.callback(self.count)
        else:
            self.done.errback(failure)


async def one_call(agent: Any, settings: UpstreamSettings, request: UpstreamRequest,
                   stream: bool) -> int:
    call = UpstreamCall(reactor, settings)
    response = await call.send(agent, request)
    if not stream:
        body = await call.read(response)
        assert response.code == 200 and body, (response.code, body)
        return 0
    counter = CountEvents(settings)
    call.deliver(response, counter)
    return await counter.done


async def loop(agent: Any, settings: UpstreamSettings, request: UpstreamRequest,
               stream: bool, count: int) -> int:
    seen = 0
    for _ in range(count):
        seen += await one_call(agent, settings, request, stream)
    return seen


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(name: str, agent: Any, url: bytes, args: argparse.Namespace) -> None:
    settings = UpstreamSettings()
    for stream in (False, True):
        body = BODY % (b',"stream":true' if stream else b"")
        request = UpstreamRequest(b"POST", url + b"/v1/chat/completions", HEADERS, body)
        each = args.requests // args.concurrency
        await gatherResults([Deferred.fromCoroutine(loop(agent, settings, request, stream, 200))
                             for _ in range(args.concurrency)])
        started = cpu()
        seen = await gatherResults([
            Deferred.fromCoroutine(loop(agent, settings, request, stream, each))
            for _ in range(args.concurrency)])
        spent = cpu() - started
        calls = each * args.concurrency
        line = f"{name:8} {'stream' if stream else 'json':6} {spent / calls * 1e6:8.1f} µs/call"
        if stream:
            line += f" {spent / sum(seen) * 1e6:7.2f} µs/event ({sum(seen) // calls} events/call)"
        print(line, flush=True)


async def main(args: argparse.Namespace) -> None:
    upstream = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "fake_upstream.py"), "--port", "0",
         "--chunks", str(args.chunks), "--chunk-delay", str(args.chunk_delay)],
        stdout=subprocess.PIPE, text=True)
    try:
        ready = upstream.stdout.readline()  # type: ignore[union-attr]
        url = ready.split()[3].encode()
        print(f"{args.requests} calls per row, concurrency {args.concurrency}, "
              f"{args.chunks} chunks per stream {args.chunk_delay:g} s apart; "
              "CPU of this process only")
        lean, lean_pool = pooled_agent(reactor, UpstreamSettings())
        twisted, twisted_pool = twisted_agent(UpstreamSettings())
        for _ in range(args.rounds):
            await measure("twisted", twisted, url, args)
            await measure("lean", lean, url, args)
        await lean_pool.closeCachedConnections()
        await twisted_pool.closeCachedConnections()
    finally:
        upstream.terminate()
        upstream.wait()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunk-delay", type=float, default=0.0,
                        help="upstream seconds between events (each then comes in a read of "
                             "its own)")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()

    def run() -> None:
        done = Deferred.fromCoroutine(main(arguments))
        done.addErrback(lambda failure: failure.printTraceback())
        done.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
