"""
Running gateways as an operator does, in real ``twistd`` processes: the ledger's crash bound
(kill -9 under load), a budget and a rate limit shared by two processes through Redis, and
config reloads on SIGHUP.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.test_twistd import TWISTD, WORKERS, free_port, gateway_argv, http

KEY = "sk-ops-test-key"


def write_config(path: Path, store: str, limiter: str = "memory", extra: str = "") -> Path:
    path.write_text(f"""
access_log: "off"
store: "{store}"
limiter: "{limiter}"
admin:
  token: admin
providers:
  demo:
    plugin: demo
    chunk_delay: 0
models:
  - name: demo
    provider: demo
{extra}""")
    return path


def chat(port: int, key: str = KEY, model: str = "demo") -> tuple[int, Any, dict]:
    """One chat call over raw HTTP: the status, the request id and the body."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
        .encode(), headers={"content-type": "application/json",
                            "authorization": f"Bearer {key}"}, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers["x-request-id"], json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers["x-request-id"], json.loads(error.read())


def spent(port: int) -> float:
    """The shared key's spend, as the admin API of the gateway on ``port`` reports it."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/admin/keys/cfg_shared",
                                     headers={"authorization": "Bearer admin"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=10) as response:
        return json.loads(response.read())["spent_usd"]


def test_kill_9_loses_at_most_the_last_second_of_the_ledger(
        start_twistd: Any, tmp_path: Path) -> None:
    database = tmp_path / "ledger.db"
    config = write_config(tmp_path / "gateway.yaml", f"sqlite:{database}",
                          extra=f"keys:\n  - name: ops\n    key: {KEY}\n")
    port = free_port()
    gateway = start_twistd(gateway_argv(TWISTD, port, config))
    gateway.wait_healthy(port)
    answered: list[tuple[float, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                status, request_id, _ = chat(port)
            except OSError:
                return
            if status == 200:
                answered.append((time.monotonic(), request_id))

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    time.sleep(2.5)
    gateway.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    gateway.process.wait()
    stop.set()
    for worker in workers:
        worker.join()

    with sqlite3.connect(database) as connection:
        stored = {row[0] for row in connection.execute("SELECT request_id FROM usage_ledger")}
    assert len(answered) > 50, "the load did not get going"
    settled = [request_id for when, request_id in answered if when < killed - 1.0]
    missing = [request_id for request_id in settled if request_id not in stored]
    assert settled and not missing, f"{len(missing)} of {len(settled)} settled records lost"


@pytest.mark.parametrize("limit", ["requests", "budget"])
def test_two_processes_share_limits_through_redis(
        start_twistd: Any, tmp_path: Path, limit: str) -> None:
    prefix = f"txgateway-test-{uuid.uuid4().hex}:"
    rule = ("requests_per_minute: 5" if limit == "requests"
            else "budget_usd: 0.5\n    budget_period: day")
    extra = f"""keys:
  - name: shared
    key: {KEY}
    {rule}
prices:
  demo:
    input: 1000000
    output: 1000000
"""
    ports = []
    for number in range(2):
        config = write_config(tmp_path / f"gateway{number}.yaml",
                              f"sqlite:{tmp_path / f'store{number}.db'}",
                              f"redis://127.0.0.1:6379/0?prefix={prefix}", extra)
        port = free_port()
        start_twistd(gateway_argv(TWISTD, port, config)).wait_healthy(port)
        ports.append(port)
    if limit == "requests":
        statuses = [chat(ports[number % 2])[0] for number in range(8)]
        assert statuses == [200] * 5 + [429] * 3
    else:
        # Each demo call costs well over the $0.50 budget: the first one spends it, for both
        # processes, once its cost is debited (just after its answer, as peers do).
        assert chat(ports[0])[0] == 200
        deadline = time.monotonic() + 5
        while spent(ports[1]) == 0:
            assert time.monotonic() < deadline, "process 1 never saw process 0's spend"
            time.sleep(0.01)
        statuses = [chat(ports[number % 2])[0] for number in range(7)]
        assert statuses == [429] * 7
    status, _, body = chat(ports[1])
    assert status == 429
    assert body["error"]["code"] == ("rate_limit_exceeded" if limit == "requests"
                                     else "budget_exceeded")


def test_sighup_reloads_the_config_and_refuses_a_bad_one(
        start_twistd: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path / "gateway.yaml", f"sqlite:{tmp_path / 'store.db'}")
    port = free_port()
    gateway = start_twistd(gateway_argv(TWISTD, port, config))
    gateway.wait_healthy(port)
    assert chat(port, model="renamed")[0] == 404

    config.write_text(config.read_text() + "  - name: renamed\n    provider: demo\n")
    gateway.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    # Every process (each worker, under TXGATEWAY_TEST_WORKERS) says it reloaded.
    while gateway.output().count("the config was reloaded") < int(WORKERS or 1):
        assert time.monotonic() < deadline, gateway.output()
        time.sleep(0.05)
    assert chat(port, model="renamed")[0] == 200

    config.write_text(config.read_text() + "  - name: broken\n    provider: nowhere\n")
    gateway.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "not reloaded" not in gateway.output():
        assert time.monotonic() < deadline, gateway.output()
        time.sleep(0.05)
    assert "no provider named 'nowhere'" in gateway.output()
    assert chat(port, model="renamed")[0] == 200
    status, body = http("GET", f"http://127.0.0.1:{port}/health")
    assert status == 200
    gateway.stop()
