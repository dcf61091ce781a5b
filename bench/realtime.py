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

The client and the echo upstream are ``bench/wsload.c`` (compiled here with gcc into the run's
temp dir): a Python client and echo fell behind real-time pace at 500 sessions, so what was
measured there was the load generator.  wsload spends a few microseconds per frame, reports
its own CPU (``client_cpu_percent``) and how many appends it sent more than 5 ms behind their
schedule (``late_sends``); the echo's CPU is ``echo_cpu_percent``.  The relay runs on CPU 0,
the client and the echo upstream on CPU 1 (as bench/run.py does).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from run import (
    CLIENT_CPUS,
    DEFAULT_GATEWAY_CMD,
    GATEWAY_CPUS,
    BenchError,
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
WSLOAD_SOURCE = Path(__file__).with_name("wsload.c")


# ------------------------------------------------------------------ the client and upstream


def build_wsload(workdir: Path) -> Path:
    """Compile bench/wsload.c once per run, into the run's temp dir."""
    binary = workdir / "wsload"
    if not binary.exists():
        if shutil.which("gcc") is None:
            raise BenchError("gcc is not installed: apt-get install -y gcc")
        subprocess.run(["gcc", "-O2", "-o", str(binary), str(WSLOAD_SOURCE)], check=True)
    return binary


def client_cmd(wsload: Path, mode: str, url: str, sessions: int, key: str) -> list[str]:
    return ["taskset", "-c", CLIENT_CPUS, str(wsload), mode, "--url", url,
            "--sessions", str(sessions), "--key", key]


def run_client(wsload: Path, url: str, sessions: int, args, upstream: Service,
               key: str = "") -> dict:
    """One ``wsload load`` run, with the echo upstream's CPU over it."""
    cmd = client_cmd(wsload, "load", url, sessions, key) + [
        "--seconds", str(args.seconds), "--warmup", str(args.warmup)]
    echo_before, wall_before = cpu_seconds(upstream.proc.pid), time.monotonic()
    try:
        done = subprocess.run(cmd, check=True, capture_output=True, text=True,
                              timeout=3 * args.seconds + 60)
    except subprocess.TimeoutExpired:  # a relay that cannot keep up at all
        return {"frames": 0, "frames_sent": 0, "timed_out": True, "p50_ms": None,
                "p99_ms": None}
    result = json.loads(done.stdout)
    result["echo_cpu_percent"] = round(100 * (cpu_seconds(upstream.proc.pid) - echo_before)
                                       / (time.monotonic() - wall_before), 1)
    return result


# ---------------------------------------------------------------------------- the harness


def gateway_service(workdir: Path, upstream_port: int, workers: int) -> Service:
    port = free_port()
    config = workdir / "gateway.yaml"
    config.write_text(
        f'listen: "tcp:{port}:interface=127.0.0.1"\n'
        f"workers: {workers}\n"
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


def relay_url(relay: Service) -> str:
    return f"ws://127.0.0.1:{relay.port}/v1/realtime?model={MODEL}"


def relay_key(relay: Service) -> str:
    return LITELLM_KEY if relay.env else ""


def measure(args, wsload: Path, name: str, relay: Service, upstream: Service, sessions: int,
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
    relayed = run_client(wsload, relay_url(relay), sessions, args, upstream, relay_key(relay))
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


def memory(args, wsload: Path, name: str, relay: Service) -> dict:
    """RSS per idle open session, and what opening and closing many sessions leaves."""
    def client(mode: str, sessions: int) -> list[str]:
        return client_cmd(wsload, mode, relay_url(relay), sessions, relay_key(relay))

    # Warmed up first: lazily built state and allocator arenas are not per-session costs.
    subprocess.run(client("churn", 1000), check=True, stdout=subprocess.DEVNULL)
    time.sleep(2)
    before = memory_mib(relay.proc.pid)["rss_mib"]
    holder = subprocess.Popen(client("hold", args.idle), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "open"
    time.sleep(1)
    held = memory_mib(relay.proc.pid)["rss_mib"]
    holder.communicate("")
    time.sleep(2)
    start = memory_mib(relay.proc.pid)["rss_mib"]
    churned = subprocess.run(client("churn", args.churn), check=True, capture_output=True,
                             text=True)
    time.sleep(2)
    end = memory_mib(relay.proc.pid)["rss_mib"]
    return {"relay": name, "idle_sessions": args.idle,
            "rss_per_idle_session_kib": round((held - before) * 1024 / args.idle, 1),
            "churned_sessions": args.churn, "rss_before_churn_mib": round(start, 1),
            "rss_after_churn_mib": round(end, 1), "churn_left_mib": round(end - start, 2),
            "churn_failed": json.loads(churned.stdout)["failed"]}


def litellm_service(workdir: Path, upstream_port: int, workers: int) -> Service:
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
           "--num_workers", str(workers)]
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
    parser.add_argument("--workers", type=int, default=1,
                        help="worker processes of each relay; more than one are not pinned")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="txgateway-realtime-bench-"))
    try:
        wsload = build_wsload(workdir)
    except BenchError as error:
        print(f"bench cannot start: {error}", file=sys.stderr)
        return 1
    upstream = Service("echo upstream", [str(wsload), "echo", "--port", "0"],
                       workdir / "upstream.log", health_path=None,
                       port_pattern=r"ready on http://127\.0\.0\.1:(\d+)")
    upstream.start(CLIENT_CPUS)
    results = []
    try:
        upstream.wait_ready()
        directs = {n: run_client(wsload, relay_url(upstream), n, args, upstream)
                   for n in args.sessions}
        builders = {"txgateway": gateway_service, "litellm": litellm_service}
        for name in args.relays:
            relay = builders[name](workdir, upstream.port, args.workers)
            relay.start(GATEWAY_CPUS if args.workers == 1 else None)
            try:
                relay.wait_ready(120)
                # Memory first, on a relay that has not yet carried the load.
                results.append(memory(args, wsload, name, relay))
                print(json.dumps(results[-1]), flush=True)
                for n in args.sessions:
                    results.append(measure(args, wsload, name, relay, upstream, n, directs[n]))
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
