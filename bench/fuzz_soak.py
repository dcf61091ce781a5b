"""
The wire fuzz's soak (issue 16, item 1): the strategies of `tests.fuzz_wire` against a
``twistd`` gateway, 100,000 cases by default, then its log is searched for tracebacks and
``/health`` asked.  ``--atheris N`` adds N coverage-blind byte mutations of seed requests by
atheris (libFuzzer's mutator) when it is installed.

    PYTHONPATH=$PWD /work/venv/bin/python bench/fuzz_soak.py [--cases N] [--atheris N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.fuzz_wire import (  # noqa: E402
    CHAT,
    GOOD_KEY,
    header_requests,
    hunt_http,
    multipart_requests,
    path_requests,
    run_ws,
    ws_sessions,
)
from tests.raw_http import send_raw  # noqa: E402
from tests.test_fuzz_wire import hunt  # noqa: E402
from tests.twistd_gateway import TwistdGateway  # noqa: E402

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
access_log: "off"
store: "sqlite:store.db"
max_body_bytes: 65536
admin:
  token: admin-secret
realtime:
  max_message_bytes: 65536
providers:
  demo:
    plugin: demo
    chunk_delay: 0
models:
  - name: demo
    provider: demo
keys:
  - name: team
    key: sk-team-0123456789
"""
SEEDS = [b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n"
         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
         % (GOOD_KEY, len(CHAT), CHAT),
         b"GET /v1/models?limit=2 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer %s\r\n\r\n"
         % GOOD_KEY,
         b"POST /v1/messages HTTP/1.1\r\nHost: gw\r\nx-api-key: %s\r\nTransfer-Encoding: "
         b"chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (GOOD_KEY, len(CHAT), CHAT)]


def atheris_child(port: int, runs: int) -> None:
    """
    ``runs`` mutations of the seeds by atheris, in a process of its own (libFuzzer exits
    when done); a 5xx ends it with status 3.  No answer within 0.2 s is no failure: raw
    mutations often leave a request incomplete.
    """
    import atheris

    def one(data: bytes) -> None:
        answer = send_raw(port, data, timeout=0.2)
        if answer.status >= 500:
            print(f"a {answer.status} for {data[:300]!r}", flush=True)
            os._exit(3)

    def mutate(data: bytes, max_size: int, seed: int) -> bytes:
        if not data:
            data = SEEDS[seed % len(SEEDS)]
        return atheris.Mutate(data, max_size)

    corpus = tempfile.mkdtemp(prefix="atheris-")
    for index, seed in enumerate(SEEDS):
        with open(os.path.join(corpus, str(index)), "wb") as file:
            file.write(seed)
    atheris.Setup([sys.argv[0], f"-runs={runs}", "-max_len=70000", corpus], one,
                  custom_mutator=mutate)
    atheris.Fuzz()


STRATEGIES: dict[str, Any] = {"headers": header_requests, "paths": path_requests,
                              "multipart": multipart_requests, "realtime": ws_sessions}


def run_slice(port: int, name: str, cases: int) -> list[tuple[str, str]]:
    """``cases`` cases of one strategy, in a process of its own: (problem, case) found."""
    if name == "realtime":
        def probe(case: Any) -> str | None:
            return run_ws(port, *case)
    else:
        def probe(case: Any) -> str | None:
            return hunt_http(port, *case)
    return [(problem, repr(case)[:200] + " ... " + repr(case)[-300:])
            for case, problem in hunt(STRATEGIES[name](), probe, cases)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000, help="over the four strategies")
    parser.add_argument("--atheris", type=int, default=0)
    parser.add_argument("--processes", type=int, default=3, help="per strategy")
    parser.add_argument("--atheris-child", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.atheris_child:
        return atheris_child(options.atheris_child, options.atheris)
    directory = tempfile.mkdtemp(prefix="fuzz-soak-")
    config = os.path.join(directory, "gateway.yaml")
    with open(config, "w") as file:
        file.write(CONFIG)
    gateway = TwistdGateway(config, directory)
    port = gateway.port

    names = list(STRATEGIES)
    share = options.cases // (len(names) * options.processes)
    problems = 0
    try:
        began = time.monotonic()
        with ProcessPoolExecutor(len(names) * options.processes) as pool:
            slices = [(name, pool.submit(run_slice, port, name, share))
                      for name in names for _ in range(options.processes)]
            for name in names:
                found = [problem for slice_name, future in slices if slice_name == name
                         for problem in future.result()]
                problems += len(found)
                print(f"{name}: {share * options.processes} cases, {len(found)} wrong "
                      f"{dict(found)}", flush=True)
        print(f"{share * options.processes * len(names)} cases in "
              f"{time.monotonic() - began:.0f} s", flush=True)
        if options.atheris:
            began = time.monotonic()
            child = subprocess.run(
                [sys.executable, __file__, "--atheris", str(options.atheris),
                 "--atheris-child", str(port)], capture_output=True, text=True)
            problems += child.returncode != 0
            print(f"atheris: {options.atheris} runs in {time.monotonic() - began:.0f} s, "
                  f"exit status {child.returncode} {child.stdout[-300:]}", flush=True)
        health = send_raw(port, b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n").status
        log = gateway.log()
        tracebacks = log.count("Traceback")
        print(f"/health: {health}; tracebacks in the gateway's log: {tracebacks}", flush=True)
        if tracebacks:
            print(log[log.index("Traceback") - 300:][:3000])
    finally:
        gateway.stop()
    sys.exit(1 if problems or tracebacks or health != 200 else 0)


if __name__ == "__main__":
    main()
