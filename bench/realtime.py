"""Realtime load: N sessions streaming 20 ms audio frames both ways, at real-time pace.

Each session sends one ``input_audio_buffer.append`` (20 ms of pcm16, 1280 base64 characters)
every 20 ms; the echo upstream answers each with a ``response.output_audio.delta`` of the same
audio and event id.  The client times every frame's round trip, once straight to the upstream
and once through each relay; the difference is the latency the relay adds (both directions
together).  Relay CPU (per relayed frame, both directions counted) and RSS are read from /proc
while the load runs.  Then idle sessions are held open for their RSS each, and 10,000 sessions
are opened and closed for what memory they leave behind.  LiteLLM's realtime relay (its proxy,
``litellm[proxy]`` in /work/bench-venvs/litellm) runs in the same run against the same upstream.

    /work/venv/bin/python bench/realtime.py --sessions 100 500 1000 --seconds 20

The gateway runs on CPU 0, the client and the echo upstream on CPU 1 (as bench/run.py does).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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
#: LiteLLM's proxy will not start without a master key, which its callers then present.
LITELLM_KEY = "sk-bench-litellm-master-key-0123456789abcdef"
LITELLM = Path(os.environ.get("LITELLM_VENV", "/work/bench-venvs/litellm")) / "bin" / "litellm"
MODEL = "bench-realtime"
#: Headers of the client's upgrades (``--key`` sets a bearer key).
HEADERS: dict[str, str] = {}
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


def dial(url: str) -> Any:
    from websockets.asyncio.client import connect

    return connect(url, additional_headers=HEADERS, max_size=None, compression=None,
                   ping_interval=None, open_timeout=60)


async def session(url: str, seconds: float, warmup: float, rtts: list[float],
                  failures: list[str], sent: list[int]) -> None:
    try:
        async with dial(url) as socket:
            await socket.recv()  # session.created

            async def receive() -> None:
                async for message in socket:
                    # LiteLLM re-encodes each event with ", " and ": " separators.
                    start = message.find('"', message.find('"event_id"') + 11) + 1
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
                sent[0] += 1
            await asyncio.sleep(0.5)
            receiver.cancel()
    except Exception as error:  # one failed session is reported, not fatal to the run
        failures.append(repr(error))


async def load(url: str, sessions: int, seconds: float, warmup: float) -> dict:
    rtts: list[float] = []
    failures: list[str] = []
    sent = [0]
    tasks = []
    for _ in range(sessions):  # staggered, so frames are spread over the 20 ms
        tasks.append(asyncio.ensure_future(session(url, seconds, warmup, rtts, failures, sent)))
        await asyncio.sleep(FRAME_SECONDS / sessions)
    await asyncio.gather(*tasks)
    rtts.sort()
    expected = sessions * (seconds - warmup) / FRAME_SECONDS

    def pct(p: float) -> float | None:
        return rtts[min(int(len(rtts) * p), len(rtts) - 1)] if rtts else None

    return {"frames": len(rtts), "frames_expected": int(expected), "frames_sent": sent[0],
            "failures": failures[:3],
            "failed_sessions": len(failures), "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


async def hold(url: str, sessions: int) -> None:
    """Open ``sessions`` idle sessions, say so on stdout, close them when stdin closes."""
    sockets = []
    for _ in range(sessions):
        socket = await dial(url)
        await socket.recv()  # session.created
        sockets.append(socket)
    print("open", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(socket.close() for socket in sockets))


async def churn(url: str, sessions: int, concurrency: int = 100) -> None:
    """Open and close ``sessions`` sessions, ``concurrency`` at a time."""
    failed = 0

    async def one() -> None:
        nonlocal failed
        try:
            async with dial(url) as socket:
                await socket.recv()
        except Exception:  # counted: a relay that refuses or times out under churn
            failed += 1

    for _ in range(sessions // concurrency):
        await asyncio.gather(*(one() for _ in range(concurrency)))
    print(json.dumps({"failed": failed}))


def run_client(url: str, sessions: int, seconds: float, warmup: float, key: str = "") -> dict:
    cmd = ["taskset", "-c", CLIENT_CPUS, sys.executable, __file__, "--url", url,
           "--sessions", str(sessions), "--seconds", str(seconds), "--warmup", str(warmup),
           "--key", key]
    try:
        done = subprocess.run(cmd, check=True, capture_output=True, text=True,
                              timeout=3 * seconds + 60)
    except subprocess.TimeoutExpired:  # a relay that cannot keep up at all
        return {"frames": 0, "frames_sent": 0, "timed_out": True, "p50_ms": None,
                "p99_ms": None}
    return json.loads(done.stdout)


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


def measure(args, name: str, relay: Service, upstream: Service, sessions: int,
            direct: dict) -> dict:
    rss_idle = memory_mib(relay.proc.pid)["rss_mib"]
    cpu_before, wall_before = cpu_seconds(relay.proc.pid), time.monotonic()
    # RSS is sampled mid-run, while every session is open.
    sampler = subprocess.Popen([sys.executable, "-c", (
        f"import time,sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        f"from run import memory_mib; time.sleep({args.seconds / 2}); "
        f"print(memory_mib({relay.proc.pid})['rss_mib'])")], stdout=subprocess.PIPE, text=True)
    # CPU is also read over the steady part of the run alone (handshakes done, before the end).
    steady: list[float] = []
    window = (args.warmup + 1, args.seconds - 0.5)
    timers = [threading.Timer(at, lambda: steady.append(cpu_seconds(relay.proc.pid)))
              for at in window]
    for timer in timers:
        timer.start()
    relayed = run_client(f"ws://127.0.0.1:{relay.port}/v1/realtime?model={MODEL}",
                         sessions, args.seconds, args.warmup, relay.env and LITELLM_KEY or "")
    for timer in timers:
        timer.join()
    cpu_used = cpu_seconds(relay.proc.pid) - cpu_before
    cpu = cpu_used / (time.monotonic() - wall_before)
    rss_loaded = float(sampler.communicate()[0])
    # Each append goes up and comes back as a delta: two relayed frames.
    frames = 2 * relayed["frames_sent"]
    return {"relay": name, "sessions": sessions, "direct": direct, "relayed": relayed,
            "added_p50_ms": _diff(relayed["p50_ms"], direct["p50_ms"]),
            "added_p99_ms": _diff(relayed["p99_ms"], direct["p99_ms"]),
            "cpu_percent": round(cpu * 100, 1),
            "cpu_us_per_frame": round(cpu_used * 1e6 / frames, 1) if frames else None,
            # At real-time pace, 2 frames per session every 20 ms in that window.
            "steady_cpu_us_per_frame": round((steady[1] - steady[0]) * 1e6 / (
                2 * sessions * (window[1] - window[0]) / FRAME_SECONDS), 1),
            "rss_idle_mib": round(rss_idle, 1),
            "rss_loaded_mib": round(rss_loaded, 1),
            "rss_per_loaded_session_kib": round((rss_loaded - rss_idle) * 1024 / sessions, 1)}


def memory(args, name: str, relay: Service) -> dict:
    """RSS per idle open session, and what opening and closing many sessions leaves."""
    url = f"ws://127.0.0.1:{relay.port}/v1/realtime?model={MODEL}"
    client = [sys.executable, __file__, "--url", url, "--key",
              relay.env and LITELLM_KEY or "", "--sessions"]
    # Warmed up first: lazily built state and allocator arenas are not per-session costs.
    subprocess.run(["taskset", "-c", CLIENT_CPUS, *client, "1000", "--churn-client"],
                   check=True)
    time.sleep(2)
    before = memory_mib(relay.proc.pid)["rss_mib"]
    holder = subprocess.Popen(["taskset", "-c", CLIENT_CPUS, *client, str(args.idle),
                               "--hold"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "open"
    time.sleep(1)
    held = memory_mib(relay.proc.pid)["rss_mib"]
    holder.communicate("")
    time.sleep(2)
    start = memory_mib(relay.proc.pid)["rss_mib"]
    churned = subprocess.run(["taskset", "-c", CLIENT_CPUS, *client, str(args.churn),
                              "--churn-client"], check=True, capture_output=True, text=True)
    time.sleep(2)
    end = memory_mib(relay.proc.pid)["rss_mib"]
    return {"relay": name, "idle_sessions": args.idle,
            "rss_per_idle_session_kib": round((held - before) * 1024 / args.idle, 1),
            "churned_sessions": args.churn, "rss_before_churn_mib": round(start, 1),
            "rss_after_churn_mib": round(end, 1), "churn_left_mib": round(end - start, 2),
            "churn_failed": json.loads(churned.stdout)["failed"]}


def litellm_service(workdir: Path, upstream_port: int) -> Service:
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{upstream_port}/v1\n"
        "      api_key: sk-bench\n"
    )
    cmd = [str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
           "--num_workers", "1"]
    return Service("litellm", cmd, workdir / "litellm.log", port=port,
                   health_path="/health/liveliness", env={"LITELLM_MASTER_KEY": LITELLM_KEY})


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[100, 500, 1000])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--idle", type=int, default=1000, help="idle sessions held open")
    parser.add_argument("--churn", type=int, default=10000, help="sessions opened and closed")
    parser.add_argument("--relays", nargs="+", default=["txgateway", "litellm"])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--url", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--key", default="", help=argparse.SUPPRESS)
    parser.add_argument("--churn-client", dest="churning", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream is not None:
        serve_upstream(args.serve_upstream)
        return 0
    if args.url:
        if args.key:
            HEADERS["Authorization"] = f"Bearer {args.key}"
        if args.hold:
            asyncio.run(hold(args.url, args.sessions[0]))
        elif args.churning:
            asyncio.run(churn(args.url, args.sessions[0]))
        else:
            result = asyncio.run(load(args.url, args.sessions[0], args.seconds, args.warmup))
            print(json.dumps(result))
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="txgateway-realtime-bench-"))
    upstream = Service("echo upstream", [sys.executable, __file__, "--serve-upstream", "0"],
                       workdir / "upstream.log", health_path=None,
                       port_pattern=r"ready on http://127\.0\.0\.1:(\d+)")
    upstream.start(CLIENT_CPUS)
    results = []
    try:
        upstream.wait_ready()
        directs = {n: run_client(f"ws://127.0.0.1:{upstream.port}/v1/realtime?model={MODEL}",
                                 n, args.seconds, args.warmup) for n in args.sessions}
        builders = {"txgateway": gateway_service, "litellm": litellm_service}
        for name in args.relays:
            relay = builders[name](workdir, upstream.port)
            relay.start(GATEWAY_CPUS)
            try:
                relay.wait_ready(120)
                # Memory first, on a relay that has not yet carried the load.
                results.append(memory(args, name, relay))
                print(json.dumps(results[-1]), flush=True)
                for n in args.sessions:
                    results.append(measure(args, name, relay, upstream, n, directs[n]))
                    print(json.dumps(results[-1]), flush=True)
            finally:
                relay.stop()
    finally:
        upstream.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
