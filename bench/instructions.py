"""Instructions per chat call through the gateway, counted by callgrind: a figure noise cannot move.

The gateway runs under ``valgrind --tool=callgrind`` with instrumentation off; after 50 calls
of warm-up it is switched on for ``--calls`` sequential calls on one keep-alive connection,
non-streamed and then streamed, against the fast fake upstream (`fake_upstream.py`).  Two
trees compare by running this from each (``PYTHONPATH`` picks the tree):

    cd /path/to/tree && PYTHONPATH=$PWD /work/venv/bin/python bench/instructions.py

Figures move by 1-2 % between runs of one tree (how the upstream's chunks fall into reads);
wall-clock benchmarks (`run.py`) are still what says how fast the gateway is.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import free_port

BENCH_DIR = Path(__file__).resolve().parent
CONFIG = """listen: "tcp:{port}:interface=127.0.0.1"
access_log: "off"
providers:
  up:
    plugin: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    api_key: sk-bench
models:
  - name: bench
    provider: up
"""


def chat_body(stream: bool) -> bytes:
    return json.dumps({"model": "bench", "stream": stream,
                       "messages": [{"role": "user", "content": "x" * 900}]}).encode()


def control(pid: int, *args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(pid)], check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: apt-get install -y valgrind", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="txgateway-instructions-"))
    upstream = subprocess.Popen([sys.executable, str(BENCH_DIR / "fake_upstream.py"),
                                 "--port", "0"], stdout=subprocess.PIPE, text=True)
    ready = re.search(r":(\d+)", upstream.stdout.readline() if upstream.stdout else "")
    assert ready is not None, "the fake upstream did not say where it listens"
    port = free_port()
    (work / "gateway.yaml").write_text(CONFIG.format(port=port, upstream_port=ready.group(1)))
    twistd = Path(sys.executable).with_name("twistd")
    gateway = subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--instr-atstart=no",
         f"--callgrind-out-file={work / 'callgrind.out'}", str(twistd), "-n", "--pidfile=",
         "txgateway", "--config", str(work / "gateway.yaml")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        connection = None
        for _ in range(600):  # a gateway under valgrind takes a minute to start
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                connection.connect()
                break
            except OSError:
                time.sleep(0.2)
        assert connection is not None

        def call(body: bytes) -> None:
            connection.request("POST", "/v1/chat/completions", body,
                               {"content-type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200, answer.status

        result = {}
        for dump, stream in enumerate((False, True), start=1):
            body = chat_body(stream)
            for _ in range(50):
                call(body)
            control(gateway.pid, "-i", "on")
            for _ in range(args.calls):
                call(body)
            control(gateway.pid, "-i", "off")
            control(gateway.pid, "-d")  # each dump counts what came since the last
            path = work / f"callgrind.out.{dump}"
            for _ in range(50):
                if path.exists() and "totals:" in path.read_text(errors="replace"):
                    break
                time.sleep(0.2)
            totals = re.search(r"^totals: (\d+)", path.read_text(errors="replace"), re.M)
            assert totals is not None
            name = "stream" if stream else "nonstream"
            result[f"{name}_instructions_per_call"] = int(totals.group(1)) // args.calls
        print(json.dumps(result))
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait()
        upstream.wait()
    return 0


if __name__ == "__main__":
    os.chdir(BENCH_DIR.parent)
    sys.exit(main())
