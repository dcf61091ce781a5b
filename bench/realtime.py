"""Realtime load: N sessions streaming 20 ms audio frames both ways, at real-time pace.

Each session sends one ``input_audio_buffer.append`` (20 ms of pcm16, 1280 base64 characters)
every 20 ms; the echo upstream answers each with a ``response.output_audio.delta`` of the same
audio and event id.  The client times every frame's round trip, once straight to the upstream
and once through txgateway; the difference is the latency the gateway's relay adds (both
directions together).  Gateway CPU and RSS are read from /proc while the load runs.

    /work/venv/bin/python bench/realtime.py --sessions 100 500 --seconds 20

The gateway runs on CPU 0, the client and the echo upstream on CPU 1 (as bench/run.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import (
    CLIENT_CPUS,
    DEFAULT_GATEWAY_CMD,
    GATEWAY_CPUS,
    Service,
    cpu_seconds,
    free_port,
    memory_mib,
)

FRAME_SECONDS = 0.020
#: 20 ms of pcm16 at 24 kHz.
AUDIO = base64.b64encode(bytes(960)).decode()


# ----------------------------------------------------------------------- the echo upstream


def serve_upstream(port: int) -> None:
    """An OpenAI-style realtime server that echoes each audio append as an output delta."""
    from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
    from twisted.internet import reactor

    class Echo(WebSocketServerProtocol):
        def onOpen(self) -> None:
            self.sendMessage(b'{"type":"session.created","event_id":"e0","session":{}}')

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.sendMessage(payload.replace(b"input_audio_buffer.append",
                                             b"response.output_audio.delta", 1)
                             .replace(b'"audio":', b'"delta":', 1))

    factory = WebSocketServerFactory()
    factory.protocol = Echo
    listening = reactor.listenTCP(port, factory, interface="127.0.0.1")
    print(f"ready on http://127.0.0.1:{listening.getHost().port}", flush=True)
    reactor.run()


# ----------------------------------------------------------------------------- the client


async def session(url: str, seconds: float, warmup: float, rtts: list[float],
                  failures: list[str]) -> None:
    from websockets.asyncio.client import connect

    try:
        async with connect(url, max_size=None, compression=None, ping_interval=None,
                           open_timeout=60) as socket:
            await socket.recv()  # session.created

            async def receive() -> None:
                async for message in socket:
                    start = message.find('"event_id":"') + 12
                    sent = int(message[start:message.find('"', start)])
                    if sent >= measuring_from:
                        rtts.append((time.perf_counter_ns() - sent) / 1e6)

            loop = asyncio.get_running_loop()
            begin = loop.time()
            measuring_from = time.perf_counter_ns() + int(warmup * 1e9)
            receiver = asyncio.ensure_future(receive())
            frame = 0
            while (due := begin + frame * FRAME_SECONDS) < begin + seconds:
                await asyncio.sleep(max(due - loop.time(), 0))
                await socket.send(f'{{"type":"input_audio_buffer.append","event_id":'
                                  f'"{time.perf_counter_ns()}","audio":"{AUDIO}"}}')
                frame += 1
            await asyncio.sleep(0.5)
            receiver.cancel()
    except Exception as error:  # one failed session is reported, not fatal to the run
        failures.append(repr(error))


async def load(url: str, sessions: int, seconds: float, warmup: float) -> dict:
    rtts: list[float] = []
    failures: list[str] = []
    tasks = []
    for _ in range(sessions):  # staggered, so frames are spread over the 20 ms
        tasks.append(asyncio.ensure_future(session(url, seconds, warmup, rtts, failures)))
        await asyncio.sleep(FRAME_SECONDS / sessions)
    await asyncio.gather(*tasks)
    rtts.sort()
    expected = sessions * (seconds - warmup) / FRAME_SECONDS

    def pct(p: float) -> float | None:
        return rtts[min(int(len(rtts) * p), len(rtts) - 1)] if rtts else None

    return {"frames": len(rtts), "frames_expected": int(expected), "failures": failures[:3],
            "failed_sessions": len(failures), "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def run_client(url: str, sessions: int, seconds: float, warmup: float) -> dict:
    cmd = ["taskset", "-c", CLIENT_CPUS, sys.executable, __file__, "--client", url,
           "--sessions", str(sessions), "--seconds", str(seconds), "--warmup", str(warmup)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


# ---------------------------------------------------------------------------- the harness


def gateway_service(workdir: Path, upstream_port: int) -> Service:
    port = free_port()
    config = workdir / "gateway.yaml"
    config.write_text(
        f'listen: "tcp:{port}:interface=127.0.0.1"\n'
        'access_log: "off"\n'
        "realtime: {max_sessions: 100000}\n"
        "providers:\n"
        "  echo:\n"
        "    plugin: openai\n"
        f"    base_url: http://127.0.0.1:{upstream_port}/v1\n"
        "    api_key: sk-bench\n"
        "models:\n"
        "  - name: bench-realtime\n"
        "    provider: echo\n"
    )
    cmd = shlex.split(DEFAULT_GATEWAY_CMD.format(config=config, port=port))
    return Service("txgateway", cmd, workdir / "gateway.log", port=port)


def measure(args, gateway: Service, upstream: Service, sessions: int) -> dict:
    direct = run_client(f"ws://127.0.0.1:{upstream.port}/v1/realtime?model=bench-realtime",
                        sessions, args.seconds, args.warmup)
    rss_idle = memory_mib(gateway.proc.pid)["rss_mib"]
    cpu_before, wall_before = cpu_seconds(gateway.proc.pid), time.monotonic()
    # RSS is sampled mid-run, while every session is open.
    sampler = subprocess.Popen([sys.executable, "-c", (
        f"import time,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"from run import memory_mib; time.sleep({args.seconds / 2}); "
        f"print(memory_mib({gateway.proc.pid})['rss_mib'])")], stdout=subprocess.PIPE, text=True)
    relayed = run_client(f"ws://127.0.0.1:{gateway.port}/v1/realtime?model=bench-realtime",
                         sessions, args.seconds, args.warmup)
    cpu = (cpu_seconds(gateway.proc.pid) - cpu_before) / (time.monotonic() - wall_before)
    rss_loaded = float(sampler.communicate()[0])
    return {"sessions": sessions, "direct": direct, "gateway": relayed,
            "added_p50_ms": _diff(relayed["p50_ms"], direct["p50_ms"]),
            "added_p99_ms": _diff(relayed["p99_ms"], direct["p99_ms"]),
            "gateway_cpu_percent": round(cpu * 100, 1),
            "gateway_rss_idle_mib": round(rss_idle, 1),
            "gateway_rss_loaded_mib": round(rss_loaded, 1),
            "rss_per_session_kib": round((rss_loaded - rss_idle) * 1024 / sessions, 1)}


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream is not None:
        serve_upstream(args.serve_upstream)
        return 0
    if args.client:
        result = asyncio.run(load(args.client, args.sessions[0], args.seconds, args.warmup))
        print(json.dumps(result))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="txgateway-realtime-bench-"))
    upstream = Service("echo upstream", [sys.executable, __file__, "--serve-upstream", "0"],
                       workdir / "upstream.log", health_path=None,
                       port_pattern=r"ready on http://127\.0\.0\.1:(\d+)")
    upstream.start(CLIENT_CPUS)
    try:
        upstream.wait_ready()
        gateway = gateway_service(workdir, upstream.port)
        gateway.start(GATEWAY_CPUS)
        try:
            gateway.wait_ready()
            results = [measure(args, gateway, upstream, n) for n in args.sessions]
        finally:
            gateway.stop()
    finally:
        upstream.stop()
    for row in results:
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
