"""
What a gateway keeps after a body fuzz (issue 19.5): RSS, open fds and the biggest growth by
allocation site (tracemalloc) before and after ``--cases`` malformed bodies per endpoint, with
``/health`` pinged meanwhile (its slowest answer).  The gateway and its fake upstreams run in
this process (their request logs emptied as they go); the fuzz client in a child process.

    PYTHONPATH=$PWD /work/venv/bin/python bench/fuzz_growth.py --cases 5000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import urllib.request


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def client(port: int, cases: int) -> None:
    """The child: fuzz every endpoint in turn while a thread pings /health."""
    from tests.fuzz_bodies import KEY, mutations
    from tests.test_fuzz_bodies import ENDPOINTS, check_openai_error, hunt

    slowest = [0.0]
    done = threading.Event()

    def ping() -> None:
        while not done.is_set():
            started = time.monotonic()
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30).read()
            slowest[0] = max(slowest[0], time.monotonic() - started)
            time.sleep(0.05)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    found = {}
    headers = {"x-api-key": "sk-caller", "authorization": "Bearer x"}
    started = time.monotonic()
    for path, (strategy, check) in ENDPOINTS.items():
        found[path] = len(hunt(port, path, strategy, check, headers, cases))
    found["/admin/keys"] = len(hunt(port, "/admin/keys", mutations(KEY, []),
                                    check_openai_error, {"authorization": "Bearer admin"},
                                    cases))
    done.set()
    pinger.join()
    print(json.dumps({"wrong_answers": found, "seconds": round(time.monotonic() - started),
                      "slowest_health_s": round(slowest[0], 3)}))


def serve(cases: int, top: int) -> None:
    from twisted.internet import reactor, task
    from twisted.internet.defer import Deferred
    from twisted.internet.threads import deferToThread

    from tests.fake_anthropic import start_fake_anthropic
    from tests.fake_openai import start_fake_openai
    from tests.gateway_harness import CONFIG, closed_port, with_own_store
    from txgateway.config import load_config
    from txgateway.providers.registry import find_plugins
    from txgateway.service import GatewayService

    async def run() -> None:
        fake, fake_port, _ = await start_fake_openai()
        claude, claude_port, _ = await start_fake_anthropic()
        directory = tempfile.mkdtemp()
        config = load_config((CONFIG + "admin:\n  token: admin\n").format(
            upstream_port=fake_port.getHost().port, closed_port=closed_port(),
            anthropic_port=claude_port.getHost().port,
            access_log=os.path.join(directory, "access.log")), find_plugins)
        service = GatewayService(with_own_store(config, directory), reactor)
        service.startService()
        port = (await service.listening).getHost().port

        def forget() -> None:  # the fakes' own logs are not the gateway's growth
            for upstream in (fake, claude):
                for name, value in vars(upstream).items():
                    if isinstance(value, list):
                        setattr(upstream, name, [])

        task.LoopingCall(forget).start(1.0)
        # Warm up (imports, first connections, caches that fill once), then measure.
        await deferToThread(subprocess.run, [sys.executable, __file__, "--client",
                                             str(port), "--cases", "30"], check=True,
                            capture_output=True)
        gc.collect()
        before = (rss_mb(), fds(), tracemalloc.take_snapshot())
        result = await deferToThread(subprocess.run, [sys.executable, __file__, "--client",
                                                      str(port), "--cases", str(cases)],
                                     check=True, capture_output=True, text=True)
        await task.deferLater(reactor, 1.0, lambda: None)  # stall timers, ledger flush
        forget()
        gc.collect()
        after = (rss_mb(), fds(), tracemalloc.take_snapshot())
        print(result.stdout.strip())
        print(f"rss_mb {before[0]:.1f} -> {after[0]:.1f}, fds {before[1]} -> {after[1]}")
        for stat in after[2].compare_to(before[2], "lineno")[:top]:
            print(stat)
        from twisted.web.server import Request
        alive = [o for o in gc.get_objects() if isinstance(o, Request)]
        print("requests alive", len(alive))
        await service.stopService()

    from twisted.logger import globalLogBeginner, jsonFileLogObserver

    # As twistd does: log events go out, not into the beginner's buffer.
    log = open(os.path.join(tempfile.mkdtemp(), "gateway.log"), "a")
    globalLogBeginner.beginLoggingTo([jsonFileLogObserver(log)], redirectStandardIO=False)
    tracemalloc.start(1)
    done = Deferred.fromCoroutine(run())
    done.addErrback(lambda failure: failure.printTraceback())
    done.addBoth(lambda _: reactor.stop())
    reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2000, help="bodies per endpoint")
    parser.add_argument("--top", type=int, default=15, help="allocation sites shown")
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.client:
        client(arguments.client, arguments.cases)
    else:
        serve(arguments.cases, arguments.top)


if __name__ == "__main__":
    main()
