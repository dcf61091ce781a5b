"""
``twistd txgateway --workers 2`` as an operator runs it: real processes sharing one listening
socket, the parent keeping them (restart, drain, reload), and the gateway still one gateway
to its users (metrics summed, one budget, every worker's realtime sessions).

Which worker holds a connection is read from ``/proc`` (the socket's inode among each worker's
file descriptors), so "both workers serve" is observed, not assumed.
"""

from __future__ import annotations

import http.client as httpclient
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.test_operations import KEY, chat, write_config
from tests.test_twistd import TWISTD, free_port, http, listen_on

#: Three Python processes import the whole gateway at once: slow on a loaded machine.
START_TIMEOUT = 60.0

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="reads /proc")


def start(start_twistd: Any, tmp_path: Path, extra: str = "", delay: float = 0.0) -> Any:
    config = write_config(tmp_path / "gateway.yaml", f"sqlite:{tmp_path / 'store.db'}",
                          extra=extra)
    if delay:
        config.write_text(config.read_text().replace("chunk_delay: 0", f"chunk_delay: {delay}"))
    port = free_port()
    gateway = start_twistd([TWISTD, "-n", "--pidfile=", "txgateway", "--config", str(config),
                            "--listen", listen_on(port), "--workers", "2"])
    gateway.wait_healthy(port, START_TIMEOUT)
    gateway.port, gateway.config = port, config
    wait_for(lambda: serving(gateway) == 2, gateway)  # /health had an answer from one
    return gateway


def serving(gateway: Any) -> int:
    """How many workers have started serving (restarted ones included)."""
    return gateway.output().count("txgateway serving on")


def wait_for(condition: Any, gateway: Any, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, gateway.output()
        time.sleep(0.05)


def workers(gateway: Any) -> list[int]:
    """The worker processes' ids (the parent's children)."""
    pid = gateway.process.pid
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listed:
            children += [int(child) for child in listed.read().split()]
    return children


def owner(connection: httpclient.HTTPConnection, pids: list[int]) -> int | None:
    """The worker holding the server end of ``connection``."""
    client_port = connection.sock.getsockname()[1]
    server_port = connection.sock.getpeername()[1]
    inode = None
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if (int(local.split(":")[1], 16) == server_port
                    and int(remote.split(":")[1], 16) == client_port):
                inode = fields[9]
    for pid in pids:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


def metric(port: int, line_start: str) -> float:
    status, body = http("GET", f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith(line_start))


def held_connections(port: int, count: int) -> list[httpclient.HTTPConnection]:
    """``count`` keep-alive connections, each having had one chat answered."""
    connections = [httpclient.HTTPConnection("127.0.0.1", port, timeout=10)
                   for _ in range(count)]
    for connection in connections:
        connection.connect()
    body = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
    for connection in connections:
        connection.request("POST", "/v1/chat/completions", body,
                           {"content-type": "application/json"})
    for connection in connections:
        response = connection.getresponse()
        assert response.status == 200
        response.read()
    return connections


def test_two_workers_serve_one_port_and_metrics_sum_them(start_twistd: Any,
                                                         tmp_path: Path) -> None:
    gateway = start(start_twistd, tmp_path)
    pids = workers(gateway)
    answered, owners = 0, set()
    for _ in range(20):  # the kernel wakes both; whichever accepts first takes the connection
        connections = held_connections(gateway.port, 8)
        answered += len(connections)
        owners |= {owner(connection, pids) for connection in connections}
        for connection in connections:
            connection.close()
        if owners >= set(pids):
            break
    assert owners == set(pids)
    assert metric(gateway.port, 'txgateway_requests_total{model="demo"') == answered
    gateway.stop(timeout=15)


def test_a_killed_worker_is_restarted(start_twistd: Any, tmp_path: Path) -> None:
    gateway = start(start_twistd, tmp_path)
    victim, survivor = workers(gateway)
    os.kill(victim, signal.SIGKILL)
    # Connections made meanwhile wait in the dead worker's socket, which the parent holds.
    assert all(chat(gateway.port)[0] == 200 for _ in range(10))
    wait_for(lambda: serving(gateway) == 3, gateway)
    assert len(workers(gateway)) == 2 and victim not in workers(gateway)
    assert survivor in workers(gateway)
    # It died young (under 10 s old): the first restart waits half a second.
    assert "starting it again in 0.5 s" in gateway.output()
    assert all(chat(gateway.port)[0] == 200 for _ in range(10))
    gateway.stop(timeout=15)


def test_a_killed_workers_counters_stay_in_the_sum(start_twistd: Any, tmp_path: Path) -> None:
    """Prometheus counters never go down: a dead worker's last gathered counts are kept."""
    gateway = start(start_twistd, tmp_path)
    victim, _ = pids = workers(gateway)
    answered = 0
    for _ in range(20):
        connections = held_connections(gateway.port, 8)
        answered += len(connections)
        owners = {owner(connection, pids) for connection in connections}
        for connection in connections:
            connection.close()
        if victim in owners:
            break
    assert victim in owners
    requests = 'txgateway_requests_total{model="demo"'
    assert metric(gateway.port, requests) == answered
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: serving(gateway) == 3, gateway)
    assert metric(gateway.port, requests) == answered
    assert all(chat(gateway.port)[0] == 200 for _ in range(5))
    assert metric(gateway.port, requests) == answered + 5
    assert metric(gateway.port, "txgateway_realtime_sessions_active") == 0
    gateway.stop(timeout=15)


def test_sigterm_drains_an_in_flight_stream(start_twistd: Any, tmp_path: Path) -> None:
    gateway = start(start_twistd, tmp_path, delay=0.2)
    connection = httpclient.HTTPConnection("127.0.0.1", gateway.port, timeout=20)
    connection.request("POST", "/v1/chat/completions", json.dumps({
        "model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}),
        {"content-type": "application/json"})
    response = connection.getresponse()
    assert response.status == 200
    first = response.readline()
    assert first.startswith(b"data: ")
    gateway.process.send_signal(signal.SIGTERM)
    rest = response.read()
    assert rest.rstrip().endswith(b"data: [DONE]"), rest
    assert gateway.process.wait(30) == -signal.SIGTERM
    assert "Server Shut Down." in gateway.output()
    assert workers_gone(gateway)


def workers_gone(gateway: Any) -> bool:
    return not Path(f"/proc/{gateway.process.pid}").exists()


def test_sighup_reloads_every_worker_and_a_bad_config_is_refused_by_all(
        start_twistd: Any, tmp_path: Path) -> None:
    gateway = start(start_twistd, tmp_path)
    config = gateway.config
    config.write_text(config.read_text() + "  - name: renamed\n    provider: demo\n")
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: gateway.output().count("the config was reloaded") == 2, gateway)
    assert all(chat(gateway.port, model="renamed")[0] == 200 for _ in range(20))

    config.write_text(config.read_text() + "  - name: broken\n    provider: nowhere\n")
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: gateway.output().count("the config was not reloaded") == 2, gateway)
    assert all(chat(gateway.port, model="renamed")[0] == 200 for _ in range(20))
    connection = httpclient.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    connection.request("POST", "/admin/reload", headers={"authorization": "Bearer admin"})
    response = connection.getresponse()
    assert response.status == 400
    assert "no provider named 'nowhere'" in json.loads(response.read())["error"]["message"]
    gateway.stop(timeout=15)


@pytest.mark.parametrize("limit", ["requests", "budget"])
def test_one_limit_is_exact_across_two_workers(start_twistd: Any, tmp_path: Path,
                                               limit: str) -> None:
    rule = ("requests_per_minute: 5" if limit == "requests"
            else "budget_usd: 0.5\n    budget_period: day")
    gateway = start(start_twistd, tmp_path, extra=f"""keys:
  - name: shared
    key: {KEY}
    {rule}
prices:
  demo:
    input: 1000000
    output: 1000000
""")
    if limit == "requests":
        statuses = [chat(gateway.port)[0] for _ in range(12)]
        assert statuses == [200] * 5 + [429] * 7
    else:
        # The first call spends the budget; its cost is debited just after its answer.
        assert chat(gateway.port)[0] == 200
        time.sleep(0.5)
        statuses = [chat(gateway.port)[0] for _ in range(12)]
        assert statuses == [429] * 12
    gateway.stop(timeout=15)


def test_admin_lists_the_realtime_sessions_of_every_worker(start_twistd: Any,
                                                           tmp_path: Path) -> None:
    gateway = start(start_twistd, tmp_path)
    pids = workers(gateway)
    url = f"ws://127.0.0.1:{gateway.port}/v1/realtime?model=demo"
    sessions, owners = [], set()
    try:
        while owners != set(pids):
            assert len(sessions) < 40, "every session landed on one worker"
            session = connect(url, additional_headers={"authorization": "Bearer x"},
                              proxy=None)
            assert json.loads(session.recv(timeout=10))["type"] == "session.created"
            sessions.append(session)
            owners.add(_ws_owner(session, pids))
        listed = _admin(gateway.port, "/admin/realtime/sessions")
        assert len(listed["active"]) == len(sessions)
        for one in listed["active"]:  # each found whichever worker is asked
            assert _admin(gateway.port, f"/admin/realtime/sessions/{one['id']}")["id"] == one["id"]
    finally:
        for session in sessions:
            session.close()
    gateway.stop(timeout=15)


def _ws_owner(session: Any, pids: list[int]) -> int | None:
    class Wrapped:
        sock = session.socket

    return owner(Wrapped(), pids)  # type: ignore[arg-type]


def _admin(port: int, path: str) -> Any:
    connection = httpclient.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers={"authorization": "Bearer admin"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    return json.loads(response.read())


def test_the_realtime_session_cap_holds_across_two_workers(start_twistd: Any,
                                                           tmp_path: Path) -> None:
    """One session open on each worker fills a cap of two: a third is refused on either."""
    gateway = start(start_twistd, tmp_path, extra="realtime: {max_sessions: 2}")
    held = one_session_on_each_worker(gateway)
    try:
        for _ in range(6):  # whichever worker takes it, the gateway is full
            with pytest.raises(InvalidStatus) as refused:
                _realtime(gateway.port)
            # The gateway's own cap is an overload, whichever worker (over AMP) says it.
            assert refused.value.response.status_code == 503
            assert refused.value.response.headers["retry-after"] == "1"
            assert b"limit of 2 realtime sessions" in refused.value.response.body
        held.popitem()[1].close()
        wait_for(lambda: len(_admin(gateway.port, "/admin/realtime/sessions")["active"]) == 1,
                 gateway)
        held[None] = _realtime(gateway.port)  # the freed seat is taken again
    finally:
        for session in held.values():
            session.close()
    gateway.stop(timeout=15)


def test_a_killed_worker_frees_its_realtime_seats(start_twistd: Any, tmp_path: Path) -> None:
    gateway = start(start_twistd, tmp_path, extra="realtime: {max_sessions: 2}")
    held = one_session_on_each_worker(gateway)
    try:
        victim = next(pid for pid in held if pid is not None)
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: serving(gateway) == 3, gateway)
        held[None] = _realtime(gateway.port)  # the survivor's and this one: two seats
    finally:
        for session in held.values():
            session.close()  # the victim's no longer answers: closed after close_timeout
    gateway.stop(timeout=15)


def one_session_on_each_worker(gateway: Any) -> dict[int | None, Any]:
    """A realtime session open on each worker, by the worker's process id."""
    pids = workers(gateway)
    held: dict[int | None, Any] = {}
    for _ in range(40):
        if set(held) == set(pids):
            return held
        session = _realtime(gateway.port)
        where = _ws_owner(session, pids)
        if where in held:  # one a worker; this one's seat is freed as it closes
            session.close()
            wait_for(lambda: len(_admin(gateway.port,
                                        "/admin/realtime/sessions")["active"]) == len(held),
                     gateway)
        else:
            held[where] = session
    raise AssertionError("every session landed on one worker")


def test_the_live_stream_shows_every_workers_sessions(start_twistd: Any,
                                                      tmp_path: Path) -> None:
    gateway = start(start_twistd, tmp_path)
    held = one_session_on_each_worker(gateway)
    try:
        listed = {one["id"] for one in _admin(gateway.port, "/admin/realtime/sessions")["active"]}
        assert len(listed) == 2
        connection = httpclient.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
        connection.request("GET", "/admin/realtime/stream",
                           headers={"authorization": "Bearer admin"})
        response = connection.getresponse()
        assert response.status == 200
        events = []
        while len(events) < 2:  # the first at once, the next a second later
            line = response.readline()
            if line.startswith(b"data: "):
                events.append(json.loads(line[len(b"data: "):]))
        for event in events:
            assert {one["id"] for one in event["active"]} == listed
        connection.close()
    finally:
        for session in held.values():
            session.close()
    gateway.stop(timeout=15)


def _realtime(port: int) -> Any:
    session = connect(f"ws://127.0.0.1:{port}/v1/realtime?model=demo",
                      additional_headers={"authorization": "Bearer x"}, proxy=None,
                      close_timeout=2)
    assert json.loads(session.recv(timeout=10))["type"] == "session.created"
    return session
