"""
The soak (issue 16, items 6 and 7): a ``twistd`` gateway (model ``demo``, no upstream) takes
100,000 requests, each on a connection of its own, and 10,000 realtime sessions, each opened
and closed; its RSS and open fds are read from /proc before and after.  Then a 10x overload
burst: with ``max_in_flight`` calls held open, ten times as many more arrive at once, each
with a 60 kB body; all must be refused with 503 at once, and RSS is read again.

    PYTHONPATH=$PWD /work/venv/bin/python bench/soak.py [--requests N] [--sessions N]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
from websockets.sync.client import connect

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.raw_http import send_raw  # noqa: E402
from tests.twistd_gateway import TwistdGateway  # noqa: E402

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
access_log: "off"
store: "sqlite:store.db"
max_in_flight: {limit}
realtime:
  max_sessions: 100000
providers:
  demo:
    plugin: demo
    chunk_delay: 0
  slow:
    plugin: demo
    chunk_delay: 1
models:
  - name: demo
    provider: demo
  - name: slow
    provider: slow
"""
CHAT = orjson.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}]})


def request(body: bytes) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json"
            b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


def usage(pid: int) -> tuple[float, int]:
    """The process's RSS in MB and its open fds."""
    with open(f"/proc/{pid}/status") as status:
        rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def requests(port: int, count: int, workers: int = 8) -> dict[int, int]:
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    raw = request(CHAT)

    def run(share: int) -> None:
        for _ in range(share):
            status = send_raw(port, raw).status
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, [count // workers] * workers))
    return statuses


def sessions(port: int, count: int, workers: int = 8) -> dict[str, int]:
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    url = f"ws://127.0.0.1:{port}/v1/realtime?model=demo"

    def run(share: int) -> None:
        for _ in range(share):
            try:
                with connect(url, open_timeout=10) as session:
                    outcome = orjson.loads(session.recv(timeout=10))["type"]
            except Exception as error:  # noqa: BLE001 (counted, and the soak goes on)
                outcome = type(error).__name__
            with lock:
                outcomes[outcome] = outcomes.get(outcome, 0) + 1

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, [count // workers] * workers))
    return outcomes


def burst(port: int, limit: int) -> tuple[dict[int, int], float, float]:
    """Hold ``limit`` slow streams open, then send 10x as many calls at once."""
    held = []
    slow = orjson.dumps({"model": "slow", "stream": True,
                         "messages": [{"role": "user", "content": "hi"}]})
    for _ in range(limit):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(request(slow))
        held.append(sock)
    time.sleep(1.0)
    big = request(orjson.dumps({"model": "demo", "messages": [
        {"role": "user", "content": "x" * 60000}]}))
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    took: list[float] = []

    def run(_: int) -> None:
        began = time.monotonic()
        status = send_raw(port, big).status
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
            took.append(time.monotonic() - began)

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(run, range(10 * limit)))
    for sock in held:
        sock.close()
    took.sort()
    return statuses, took[len(took) // 2], took[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=50, help="max_in_flight for the burst")
    options = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="soak-")
    config = os.path.join(directory, "gateway.yaml")
    with open(config, "w") as file:
        file.write(CONFIG.format(limit=options.limit))
    gateway = TwistdGateway(config, directory)
    pid = gateway.process.pid
    try:
        requests(gateway.port, 2000)
        sessions(gateway.port, 200)
        time.sleep(1)
        rss0, fds0 = usage(pid)
        print(f"warm:  RSS {rss0:.1f} MB, {fds0} fds", flush=True)
        began = time.monotonic()
        statuses = requests(gateway.port, options.requests)
        took = time.monotonic() - began
        time.sleep(1)
        rss1, fds1 = usage(pid)
        print(f"{options.requests} requests in {took:.0f} s {statuses}: RSS {rss1:.1f} MB "
              f"({rss1 - rss0:+.1f}), {fds1} fds ({fds1 - fds0:+d})", flush=True)
        began = time.monotonic()
        outcomes = sessions(gateway.port, options.sessions)
        took = time.monotonic() - began
        time.sleep(2)
        rss2, fds2 = usage(pid)
        print(f"{options.sessions} realtime sessions in {took:.0f} s {outcomes}: RSS "
              f"{rss2:.1f} MB ({rss2 - rss1:+.1f}), {fds2} fds ({fds2 - fds1:+d})", flush=True)
        statuses, median, slowest = burst(gateway.port, options.limit)
        time.sleep(2)
        rss3, fds3 = usage(pid)
        print(f"burst of {10 * options.limit} over {options.limit} held calls {statuses}, "
              f"answered in {median * 1000:.0f} ms (median), {slowest * 1000:.0f} ms "
              f"(slowest): RSS {rss3:.1f} MB "
              f"({rss3 - rss2:+.1f}), {fds3} fds ({fds3 - fds2:+d})", flush=True)
    finally:
        gateway.stop()


if __name__ == "__main__":
    main()
