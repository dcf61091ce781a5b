"""
The HTTP/1.1 server's own cost: CPU per request, twisted.web's ``Site`` against
`txgateway.http.server`, both rendering the same ``Resource`` (it reads the ~1 kB body and
answers ~600 bytes of JSON with the headers a proxied chat answer has).

Each server runs in its own process pinned to CPU 0, wrk on CPU 1; only the server's CPU
(user + system, from /proc) is counted, over a timed wrk run after a warm-up.

    /work/venv/bin/python bench/http_server.py [--duration 5] [--concurrency 1,50]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BODY = '{"model":"bench-model","messages":[{"role":"user","content":"' + "Say something. " * 60 \
    + '"}]}'
CLK_TCK = os.sysconf("SC_CLK_TCK")


def serve(kind: str) -> None:
    """The server process: print the port, then serve until killed."""
    from twisted.internet import reactor
    from twisted.web.resource import Resource

    from txgateway.http.server import HTTPServer
    from txgateway.web.site import GatewaySite

    answer = b'{"id":"chatcmpl-1","object":"chat.completion","choices":[{"message":' \
        b'{"role":"assistant","content":"' + b"x" * 480 + b'"}}]}'

    class Chat(Resource):
        isLeaf = True

        def render_POST(self, request):  # noqa: N802
            request.content.getvalue()
            request.getHeader(b"authorization")
            request.setHeader(b"x-request-id", b"0123456789abcdef")
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"content-length", b"%d" % len(answer))
            return answer

    root = Resource()
    root.putChild(b"chat", Chat())
    factory = HTTPServer(root, 1 << 20, reactor) if kind == "lean" else GatewaySite(root)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    print(port.getHost().port, flush=True)
    reactor.run()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wrk(script: Path, port: int, connections: int, seconds: float) -> int:
    done = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s",
         str(script), f"http://127.0.0.1:{port}/chat"], capture_output=True, text=True,
        check=True)
    if "Non-2xx" in done.stdout or "Socket errors" in done.stdout:
        raise SystemExit(f"wrk saw failures:\n{done.stdout}")
    return int(re.search(r"(\d+) requests in", done.stdout).group(1))


def measure(kind: str, script: Path, concurrency: list[int], seconds: float) -> None:
    server = subprocess.Popen(["taskset", "-c", "0", sys.executable, __file__, "--serve", kind],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        for connections in concurrency:
            wrk(script, port, connections, 1)
            before, start = cpu_seconds(server.pid), time.monotonic()
            requests = wrk(script, port, connections, seconds)
            cpu, wall = cpu_seconds(server.pid) - before, time.monotonic() - start
            print(f"{kind:8} c={connections:<3} {requests / wall:8.0f} req/s "
                  f"{cpu / requests * 1e6:7.1f} µs CPU/request", flush=True)
    finally:
        server.kill()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", default="1,50")
    parser.add_argument("--servers", default="twisted,lean")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    with tempfile.TemporaryDirectory() as directory:
        script = Path(directory) / "post.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.body = [==[{BODY}]==]\n'
                          'wrk.headers["Content-Type"] = "application/json"\n'
                          'wrk.headers["Authorization"] = "Bearer sk-bench"\n')
        for kind in args.servers.split(","):
            measure(kind, script, [int(c) for c in args.concurrency.split(",")], args.duration)


if __name__ == "__main__":
    main()
