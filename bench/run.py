"""Benchmark txgateway (and optional peer gateways) against a fake upstream with wrk.

Every target gets the same wrk client, request body and settings: the fake
upstream directly (the baseline), txgateway in front of it, and any
``--peer``.  All targets run side by side in one invocation and scenarios are
interleaved across them, so ratios are taken minutes apart at most on this
noisy shared machine.  See bench/README.md for what each column means.

    /work/venv/bin/python bench/run.py [--peer tensorzero] [--peer portkey] [--json out.json]
"""

import argparse
import contextlib
import http.client
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
MODEL = "bench-model"
API_KEY = "sk-bench"
COMPLETIONS_PATH = "/v1/chat/completions"
GATEWAY_CPUS = "0"
CLIENT_CPUS = "1"
READY_TIMEOUT = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
TWISTD = Path(sys.executable).with_name("twistd")
DEFAULT_GATEWAY_CMD = (
    f"{TWISTD} -n --pidfile= txgateway --config {{config}}"
    " --listen tcp:{port}:interface=127.0.0.1"
)
SCENARIOS = {"nonstream": False, "stream": True}
PEERS = ("tensorzero", "portkey")
#: What the harness installs when --portkey-dir has no gateway yet: the version the
#: preloaded shims in peers/ were written and checked against.
PORTKEY_PACKAGE = "@portkey-ai/gateway@1.15.2"


class BenchError(Exception):
    """A failure the user must see: printed without a traceback, exit status 1."""


# --------------------------------------------------------------------------- processes


@dataclass
class Service:
    """A process under test (or the fake upstream) with its log, port and readiness check.

    The port is either chosen by the harness up front or, for processes that
    pick their own, read from their log with ``port_pattern``.
    """

    name: str
    cmd: list[str]
    log_path: Path
    health_path: str | None = "/health"
    port: int | None = None
    port_pattern: str | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, cpus: str | None) -> None:
        """Start in its own session so stop() can end exactly this process group."""
        cmd = (["taskset", "-c", cpus] if cpus else []) + self.cmd
        env = {**os.environ, **(self.env or {})}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Block until the port is known and the health check answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                status = self.proc.returncode
                raise BenchError(f"{self.name} exited with status {status}\n{self.log_tail()}")
            if self.port is None:
                self.port = self.port_from_log()
            elif self.health_path is None or http_ok(self.base_url + self.health_path):
                return
            time.sleep(0.1)
        raise BenchError(f"{self.name} not ready after {timeout:.0f} s\n{self.log_tail()}")

    def port_from_log(self) -> int | None:
        found = re.search(self.port_pattern, self.log_path.read_text(errors="replace"))
        return int(found.group(1)) if found else None

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text)

    def stop(self) -> None:
        """SIGTERM the service's own process group, SIGKILL it if it lingers."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait()


def upstream_completions(upstream: Service) -> int:
    """Chat completions the fake upstream has answered so far (its ``GET /stats``)."""
    with urllib.request.urlopen(upstream.base_url + "/stats", timeout=5) as response:
        return json.load(response)["completions"]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- /proc readings


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, so wrapper commands (sh, npx) are measured whole."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process tree (all threads included), in seconds."""
    ticks = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return ticks / CLK_TCK


def memory_mib(pid: int) -> dict[str, Any]:
    """VmRSS (now) and VmHWM (peak) of the process tree, in MiB, and each process's RSS."""
    totals = {"VmRSS": 0, "VmHWM": 0}
    each = []
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in totals:
                    totals[key] += int(value.split()[0])
                    if key == "VmRSS":
                        each.append(int(value.split()[0]) / 1024)
    return {"rss_mib": totals["VmRSS"] / 1024, "peak_rss_mib": totals["VmHWM"] / 1024,
            "process_rss_mib": sorted(each, reverse=True)}


# --------------------------------------------------------------------------- targets


@dataclass
class Target:
    """One thing wrk loads: the upstream itself (``direct``) or a gateway in front of it."""

    name: str
    service: Service
    path: str = COMPLETIONS_PATH
    model: str = MODEL
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.service.base_url + self.path


def upstream_service(args, workdir: Path) -> Service:
    cmd = [
        sys.executable,
        str(BENCH_DIR / "fake_upstream.py"),
        "--port",
        "0",
        "--chunks",
        str(args.chunks),
        "--chunk-delay",
        str(args.chunk_delay),
    ]
    return Service(
        "fake upstream",
        cmd,
        workdir / "upstream.log",
        port_pattern=r"ready on http://127\.0\.0\.1:(\d+)",
    )


def txgateway_target(args, workdir: Path, upstream_url: str) -> Target:
    """txgateway (or whatever ``--gateway-cmd`` starts) with a one-provider config."""
    port = free_port()
    config = workdir / "txgateway.yaml"
    config.write_text(
        f'listen: "tcp:{port}:interface=127.0.0.1"\n'
        'access_log: "-"\n'
        "providers:\n"
        "  upstream:\n"
        "    plugin: openai\n"
        f"    base_url: {upstream_url}/v1\n"
        f"    api_key: {API_KEY}\n"
        "models:\n"
        f"  - name: {MODEL}\n"
        "    provider: upstream\n"
    )
    cmd = shlex.split(args.gateway_cmd.format(config=config, port=port, upstream_url=upstream_url))
    if args.workers != 1:
        cmd += ["--workers", str(args.workers)]
    service = Service(args.gateway_name, cmd, workdir / "gateway.log", port=port)
    return Target(args.gateway_name, service)


def tensorzero_target(args, workdir: Path, upstream_url: str) -> Target:
    """TensorZero's embedded gateway; observability (ClickHouse) off, OpenAI-compatible endpoint."""
    python = Path(args.tensorzero_python)
    if not python.exists():
        venv = python.parent.parent
        raise BenchError(
            f"tensorzero peer: {python} missing; set it up with:\n"
            f"  python3 -m venv {venv} && {venv}/bin/pip install tensorzero"
        )
    config = workdir / "tensorzero.toml"
    config.write_text(
        "[gateway.observability]\nenabled = false\n\n"
        f'[models.{MODEL}]\nrouting = ["upstream"]\n\n'
        f"[models.{MODEL}.providers.upstream]\n"
        f'type = "openai"\nmodel_name = "{MODEL}"\napi_base = "{upstream_url}/v1/"\n'
        'api_key_location = "env::OPENAI_API_KEY"\n'
    )
    cmd = [str(python), str(BENCH_DIR / "peers" / "tensorzero_gateway.py"), str(config)]
    service = Service(
        "tensorzero",
        cmd,
        workdir / "tensorzero.log",
        health_path=None,
        port_pattern=r"ready http://127\.0\.0\.1:(\d+)",
        env={"OPENAI_API_KEY": API_KEY},
    )
    return Target(
        "tensorzero",
        service,
        path="/openai/v1/chat/completions",
        model=f"tensorzero::model_name::{MODEL}",
    )


def install_portkey(where: Path, log_path: Path) -> None:
    """npm-install the gateway into ``where`` (outside the repo) the first time it is needed."""
    if shutil.which("npm") is None:
        raise BenchError(f"portkey peer: not in {where} and npm is not installed")
    print(f"installing {PORTKEY_PACKAGE} into {where} (log {log_path})", flush=True)
    where.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        done = subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", PORTKEY_PACKAGE],
            cwd=where,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        raise BenchError(f"portkey peer: npm install failed ({done.returncode}):\n{tail}")


def portkey_target(args, workdir: Path, upstream_url: str) -> Target:
    """Portkey's Node gateway, routed per request by x-portkey-* headers (no config file).

    The x-portkey-custom-host value replaces the OpenAI provider's base URL
    (``customHost || getBaseURL()``, then ``/chat/completions``); 127.0.0.1 is on
    its default list of trusted custom hosts.
    """
    where = Path(args.portkey_dir)
    entry = where / "node_modules/@portkey-ai/gateway/build/start-server.js"
    if not entry.exists():
        install_portkey(where, workdir / "portkey-install.log")
    port = free_port()
    cmd = [
        "node",
        "--import",
        str(BENCH_DIR / "peers" / "portkey_headers_fix.mjs"),
        "--import",
        str(BENCH_DIR / "peers" / "portkey_loopback.mjs"),
        str(entry),
        f"--port={port}",
        "--headless",
    ]
    service = Service("portkey", cmd, workdir / "portkey.log", health_path="/", port=port)
    headers = {
        "x-portkey-provider": "openai",
        "x-portkey-custom-host": f"{upstream_url}/v1",
        "Authorization": f"Bearer {API_KEY}",
    }
    return Target("portkey", service, headers=headers)


PEER_TARGETS = {"tensorzero": tensorzero_target, "portkey": portkey_target}


def check_txgateway_installed(args) -> None:
    """Fail early, with the fix, when the default command cannot work yet."""
    if args.gateway_cmd != DEFAULT_GATEWAY_CMD:
        return
    listing = subprocess.run([str(TWISTD), "--help"], capture_output=True, text=True).stdout
    if not re.search(r"^\s+txgateway\b", listing, re.MULTILINE):
        raise BenchError(
            "the txgateway twistd plugin is not installed (pip install -e /work/main); "
            "pass --no-gateway to measure only the upstream and peers"
        )


# --------------------------------------------------------------------------- wrk


def chat_body(model: str, stream: bool) -> str:
    """A realistic ~1 kB chat request: system prompt, a short conversation, sampling params."""
    body = {
        "model": model,
        "messages": [
            {
                "role": "system",
                "content": "You are a concise assistant for an online bookshop. "
                "Answer in at most three sentences, cite the catalogue number when you recommend "
                "a book, and never invent prices or stock levels.",
            },
            {
                "role": "user",
                "content": "I liked 'The Left Hand of Darkness' and 'Solaris'. "
                "Can you suggest two more novels in the same spirit?",
            },
            {
                "role": "assistant",
                "content": "Try 'The Dispossessed' (CAT-1174), also by Le Guin, "
                "and 'Roadside Picnic' (CAT-2209) by the Strugatsky brothers.",
            },
            {
                "role": "user",
                "content": "Thanks! Which of those is shorter, and is there a good "
                "translation of the second one that you would recommend for a first read?",
            },
        ],
        "temperature": 0.7,
        "top_p": 1,
        "max_tokens": 256,
        "user": "bench-user-0001",
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body)


def lua_script(target: Target, stream: bool) -> str:
    """wrk script: POST the chat body with the target's headers (long brackets need no escaping)."""
    body = chat_body(target.model, stream)
    if "]==]" in body:
        raise BenchError("request body cannot be embedded in a Lua long string")
    headers = {"Content-Type": "application/json", **target.headers}
    lines = ['wrk.method = "POST"', f"wrk.body = [==[{body}]==]"]
    lines += [f'wrk.headers["{name}"] = [==[{value}]==]' for name, value in headers.items()]
    return "\n".join(lines) + "\n"


@dataclass
class WrkResult:
    requests: int
    rps: float
    latency_ms: dict[str, float]


UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(output: str) -> WrkResult:
    """Read wrk --latency output; any non-2xx/3xx response or socket error is fatal."""
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    sock = re.search(r"Socket errors: connect \d+, read \d+, write \d+, timeout \d+", output)
    if non_2xx or sock:
        raise BenchError(f"wrk saw failed requests:\n{output}")
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    requests = re.search(r"(\d+) requests in ", output)
    percentiles = re.findall(r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
    latency = {f"p{pct}": float(value) * UNIT_MS[unit] for pct, value, unit in percentiles}
    if not (rps and requests and {"p50", "p99"} <= latency.keys()):
        raise BenchError(f"could not parse wrk output:\n{output}")
    return WrkResult(int(requests.group(1)), float(rps.group(1)), latency)


def run_wrk(script: Path, url: str, concurrency: int, seconds: float, args) -> WrkResult:
    threads = min(args.threads, concurrency)
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(script),
        url,
    ]
    if args.pin:
        cmd = ["taskset", "-c", CLIENT_CPUS] + cmd
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def measure(
    target: Target, upstream: Service, scenario: str, concurrency: int, args, workdir: Path
) -> dict:
    """Warm up, then one timed wrk run with the target's CPU time read around it.

    Every answer wrk counted must have come from the fake upstream, so its
    completion count has to rise by at least that much: a gateway that answered
    from a cache or with canned errors dressed as 200s fails the run.
    """
    script = workdir / f"{target.name}-{scenario}.lua"
    script.write_text(lua_script(target, SCENARIOS[scenario]))
    if args.warmup > 0:
        run_wrk(script, target.url, concurrency, args.warmup, args)
    pid = target.service.proc.pid
    cpu_before = cpu_seconds(pid)
    forwarded_before = upstream_completions(upstream)
    result = run_wrk(script, target.url, concurrency, args.duration, args)
    cpu = cpu_seconds(pid) - cpu_before
    forwarded = upstream_completions(upstream) - forwarded_before
    if forwarded < result.requests:
        raise BenchError(
            f"{target.name} ({scenario}, c={concurrency}): wrk got {result.requests} answers "
            f"but the fake upstream served only {forwarded} completions meanwhile"
        )
    return {
        "scenario": scenario,
        "concurrency": concurrency,
        "target": target.name,
        "requests": result.requests,
        "rps": result.rps,
        "upstream_completions": forwarded,
        **{f"{name}_ms": value for name, value in result.latency_ms.items()},
        "cpu_ms_per_req": 1000 * cpu / max(result.requests, 1),
        **memory_mib(pid),
    }


def first_token_ms(target: Target, samples: int) -> float:
    """Median time from sending a streamed chat to its first ``data:`` line, one at a time."""
    body = chat_body(target.model, True).encode()
    headers = {"Content-Type": "application/json", **target.headers}
    port = target.service.port
    times = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(samples):
        started = time.perf_counter()
        connection.request("POST", target.path, body, headers)
        response = connection.getresponse()
        while not response.readline().startswith(b"data:"):
            pass
        times.append(1000 * (time.perf_counter() - started))
        response.read()
    connection.close()
    return sorted(times)[len(times) // 2]


# --------------------------------------------------------------------------- report


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report_rows(results: list[dict], primary: str) -> list[list[str]]:
    """One row per gateway and scenario, each compared with the direct run of that scenario."""
    by_key = {(r["scenario"], r["concurrency"], r["target"]): r for r in results}
    rows = []
    for r in results:
        if r["target"] == "direct":
            continue
        direct = by_key[(r["scenario"], r["concurrency"], "direct")]
        ours = by_key.get((r["scenario"], r["concurrency"], primary))
        vs_peer = ours["rps"] / r["rps"] if ours and r["target"] != primary else None
        rows.append(
            [
                f"{r['scenario']} c={r['concurrency']}",
                r["target"],
                fmt(direct["rps"], ".0f"),
                fmt(r["rps"], ".0f"),
                fmt(r["rps"] / direct["rps"], ".3f"),
                fmt(direct["p50_ms"], ".2f"),
                fmt(direct["p99_ms"], ".2f"),
                fmt(r["p50_ms"], ".2f"),
                fmt(r["p99_ms"], ".2f"),
                fmt(r["p50_ms"] - direct["p50_ms"], "+.2f"),
                fmt(r["p99_ms"] - direct["p99_ms"], "+.2f"),
                fmt(r["cpu_ms_per_req"], ".3f"),
                fmt(vs_peer, ".2f"),
            ]
        )
    return rows


HEADER = [
    "scenario",
    "target",
    "direct rps",
    "rps",
    "rps/direct",
    "direct p50",
    "direct p99",
    "p50",
    "p99",
    "added p50",
    "added p99",
    "cpu ms/req",
    "ours/peer rps",
]


def print_report(results: list[dict], memory: dict[str, dict], ttft: dict[str, float],
                 primary: str) -> None:
    direct_only = [r for r in results if r["target"] == "direct"]
    print("\nDirect upstream capacity (fake_upstream, no gateway):")
    for r in direct_only:
        print(
            f"  {r['scenario']:9} c={r['concurrency']:<4} {r['rps']:9.0f} req/s  "
            f"p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
        )
    rows = report_rows(results, primary)
    if rows:
        print(
            "\nLatencies in ms; 'added' = target minus direct; ours/peer = "
            f"{primary} rps / this target's rps."
        )
        print_table([HEADER] + rows)
    for name, mem in memory.items():
        each = ", ".join(f"{rss:.1f}" for rss in mem["process_rss_mib"])
        print(
            f"{name}: RSS after load {mem['rss_mib']:.1f} MiB in total (per process: {each}), "
            f"peak RSS {mem['peak_rss_mib']:.1f} MiB"
        )
    direct_ttft = ttft.get("direct")
    if direct_ttft is not None:
        print(f"\nStreaming time to first token at c=1 (median): direct {direct_ttft:.2f} ms")
        for name, value in ttft.items():
            if name != "direct":
                print(f"  {name}: {value:.2f} ms, added {value - direct_ttft:+.2f} ms")


def print_table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        print(
            "  ".join(
                cell.rjust(width) if i > 1 else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print("  ".join("-" * width for width in widths))


# --------------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--duration", type=int, default=10, help="seconds per measured run (default 10)")
    add("--warmup", type=int, default=2, help="seconds of unmeasured load first (default 2)")
    add("--concurrency", default="1,50,200", help="comma-separated wrk connection counts")
    add("--workers", type=int, default=1,
        help="txgateway's worker processes (more than 1: nothing is pinned, see README)")
    add("--ttft-samples", type=int, default=50,
        help="streamed calls at c=1 for the time to first token (0: skip)")
    add("--scenarios", default="nonstream,stream", help="comma-separated: nonstream,stream")
    add("--threads", type=int, default=1, help="wrk threads (default 1, see README)")
    add(
        "--no-pin",
        dest="pin",
        action="store_false",
        help=f"don't pin gateways to CPU {GATEWAY_CPUS}, upstream and wrk to CPU {CLIENT_CPUS}",
    )
    add("--chunks", type=int, default=20, help="SSE chunks per streamed answer")
    add("--chunk-delay", type=float, default=0.0, help="upstream seconds between chunks")
    add(
        "--gateway-cmd",
        default=DEFAULT_GATEWAY_CMD,
        help="command template of the gateway under test; placeholders: "
        "{config} (txgateway YAML), {port}, {upstream_url}",
    )
    add("--gateway-name", default="txgateway", help="label of --gateway-cmd's gateway")
    add("--no-gateway", action="store_true", help="skip txgateway (direct and peers only)")
    add("--peer", action="append", default=[], choices=PEERS, help="also measure this peer")
    add("--tensorzero-python", default="/work/bench-venvs/tensorzero/bin/python")
    add("--portkey-dir", default="/work/bench-venvs/portkey")
    add("--json", type=Path, help="also write all results here")
    add("--keep-logs", action="store_true", help="keep the temp dir with configs and logs")
    args = parser.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.scenarios = args.scenarios.split(",")
    if unknown := set(args.scenarios) - SCENARIOS.keys():
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.workers != 1 and args.pin:
        print("note: --workers: not pinning (the gateways may use every core)", file=sys.stderr)
        args.pin = False
    if args.pin and (os.cpu_count() or 1) < 2:
        print("note: fewer than 2 CPUs, not pinning", file=sys.stderr)
        args.pin = False
    return args


def check_tools(args) -> None:
    """Fail before starting anything when a required tool is missing."""
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed: apt-get install -y wrk")
    if args.pin and shutil.which("taskset") is None:
        raise BenchError("taskset is not installed (util-linux); pass --no-pin")
    if not args.no_gateway:
        check_txgateway_installed(args)


def start_targets(args, workdir: Path, stack: contextlib.ExitStack) -> list[Target]:
    """Start the upstream, then every gateway; all stay up for the whole run."""
    upstream = upstream_service(args, workdir)
    launch(upstream, CLIENT_CPUS if args.pin else None, stack)
    targets = [Target("direct", upstream)]
    builders = [] if args.no_gateway else [txgateway_target]
    builders += [PEER_TARGETS[peer] for peer in dict.fromkeys(args.peer)]
    for build in builders:
        target = build(args, workdir, upstream.base_url)
        launch(target.service, GATEWAY_CPUS if args.pin else None, stack)
        targets.append(target)
    return targets


def launch(service: Service, cpus: str | None, stack: contextlib.ExitStack) -> None:
    stack.callback(service.stop)
    service.start(cpus)
    service.wait_ready()
    where = f"pid {service.proc.pid}, log {service.log_path}"
    print(f"{service.name} ready at {service.base_url} ({where})", flush=True)


def print_progress(r: dict) -> None:
    print(
        f"  {r['scenario']:9} c={r['concurrency']:<4} {r['target']:11} {r['rps']:9.0f} req/s"
        f"  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms",
        flush=True,
    )


def run_all(args, workdir: Path) -> tuple[list[dict], dict[str, dict], dict[str, float]]:
    """Interleave targets inside each scenario so drift on the machine hits all of them alike."""
    results = []
    with contextlib.ExitStack() as stack:
        targets = start_targets(args, workdir, stack)
        upstream = targets[0].service
        for scenario in args.scenarios:
            for concurrency in args.concurrency:
                for target in targets:
                    result = measure(target, upstream, scenario, concurrency, args, workdir)
                    results.append(result)
                    print_progress(result)
        ttft = ({t.name: first_token_ms(t, args.ttft_samples) for t in targets}
                if "stream" in args.scenarios and args.ttft_samples else {})
        memory = {t.name: memory_mib(t.service.proc.pid) for t in targets if t.name != "direct"}
    return results, memory, ttft


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_tools(args)
    except BenchError as error:
        print(f"bench cannot start: {error}", file=sys.stderr)
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="txgw-bench-"))
    try:
        results, memory, ttft = run_all(args, workdir)
    except BenchError as error:
        print(f"\nbench failed: {error}\n(configs and logs kept in {workdir})", file=sys.stderr)
        return 1
    primary = args.gateway_name
    print_report(results, memory, ttft, primary)
    if args.json:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        report = {"settings": settings, "results": results, "memory": memory, "ttft_ms": ttft}
        args.json.write_text(json.dumps(report, indent=2))
    if args.keep_logs:
        print(f"configs and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
