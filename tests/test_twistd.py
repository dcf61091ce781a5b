"""
The gateway as an operator runs it: real ``twistd`` processes on real loopback sockets.

Each test starts twistd from this interpreter's environment, in a temporary working
directory (twistd writes its log and pid files there), and kills it at teardown whatever
happened.  The helpers are shared with ``test_install``, which runs them in fresh venvs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import openai
import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "twistd-config" / "gateway.yaml"
TAC = REPO / "twistd-config" / "gateway.tac"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

#: ``TXGATEWAY_TEST_WORKERS=2`` runs every gateway these tests start as two workers (CI does).
WORKERS = os.environ.get("TXGATEWAY_TEST_WORKERS", "")
#: Workers are more processes importing the whole gateway at once: slower on a loaded machine.
START_TIMEOUT = 45.0 if WORKERS else 15.0
STOP_TIMEOUT = 5.0

# urllib without the environment's proxies: requests go to this machine's loopback only.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A loopback port that was free a moment ago (twistd can't report a tcp:0 port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listen_on(port: int) -> str:
    return f"tcp:{port}:interface=127.0.0.1"


def http(method: str, url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request; an HTTP error status is returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, method=method, headers={"content-type": "application/json"}
    )
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Twistd:
    """A running twistd whose stdout and stderr go to files (no pipe to fill up)."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None,
                 base_env: Mapping[str, str] | None = None) -> None:
        self.cwd = cwd
        self.stdout_path = cwd / "stdout.txt"
        self.stderr_path = cwd / "stderr.txt"
        # The gateway's own variables come only from the test (a developer may have them set).
        environ = {name: value for name, value in (base_env or os.environ).items()
                   if name not in ("TXGATEWAY_CONFIG", "TXGATEWAY_LISTEN", "TXGATEWAY_PORT")}
        environ.update(PYTHONUNBUFFERED="1", **(env or {}))
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.process = subprocess.Popen(
                argv, cwd=cwd, env=environ, stdin=subprocess.DEVNULL, stdout=out, stderr=err
            )

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def wait_healthy(self, port: int, timeout: float = START_TIMEOUT) -> None:
        """Poll ``/health`` until it answers 200; fail early if twistd has exited."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"twistd exited {self.process.returncode}:\n{self.output()}")
            try:
                status, _ = http("GET", f"http://127.0.0.1:{port}/health", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"/health did not answer 200 in {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, as a service manager stops it: twistd must shut down cleanly, quickly."""
        self.process.send_signal(signal.SIGTERM)
        try:
            returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"twistd did not exit {timeout} s after SIGTERM:\n{self.output()}")
        # After a clean shutdown twistd re-raises the signal that stopped it, so the exit
        # status says "killed by SIGTERM" as a service manager expects.
        assert returncode == -signal.SIGTERM, self.output()
        assert "Server Shut Down." in self.output()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def start_twistd(tmp_path: Path) -> Iterator[Callable[..., Twistd]]:
    """Starts twistd processes in ``tmp_path``; every one is killed at teardown."""
    started: list[Twistd] = []

    def start(argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Twistd:
        directory = cwd or tmp_path / f"run{len(started)}"
        directory.mkdir(parents=True, exist_ok=True)
        twistd = Twistd(argv, directory, env)
        started.append(twistd)
        return twistd

    yield start
    for twistd in started:
        twistd.kill()


def demo_chat(port: int) -> dict[str, Any]:
    """A non-streaming demo chat completion over plain HTTP (no SDK needed)."""
    status, body = http(
        "POST",
        f"http://127.0.0.1:{port}/v1/chat/completions",
        {"model": "demo", "messages": [{"role": "user", "content": "hello"}]},
    )
    assert status == 200, body
    answer = json.loads(body)
    assert answer["choices"][0]["message"]["content"]
    assert answer["usage"]["prompt_tokens"] > 0
    assert answer["usage"]["completion_tokens"] > 0
    return answer




def gateway_argv(twistd: str, port: int, config: Path = CONFIG) -> list[str]:
    return [twistd, "-n", "--pidfile=", "txgateway", "--config", str(config),
            "--listen", listen_on(port), *(["--workers", WORKERS] if WORKERS else [])]


def test_help_lists_the_subcommand() -> None:
    result = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "txgateway" in result.stdout


def test_serves_chat_completions_through_the_openai_sdk(start_twistd: Any) -> None:
    port = free_port()
    gateway = start_twistd(gateway_argv(TWISTD, port))
    gateway.wait_healthy(port)
    client = openai.OpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=10,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    messages: Any = [{"role": "user", "content": "Say something."}]

    completion = client.chat.completions.create(model="demo", messages=messages)
    assert completion.choices[0].message.content
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.completion_tokens > 0

    text, usage = [], None
    for chunk in client.chat.completions.create(
        model="demo", messages=messages, stream=True, stream_options={"include_usage": True}
    ):
        text.extend(choice.delta.content or "" for choice in chunk.choices)
        usage = chunk.usage or usage
    assert "".join(text)
    assert usage is not None
    assert usage.completion_tokens > 0

    gateway.stop()


def test_tac_serves_with_listen_from_the_environment(start_twistd: Any) -> None:
    port = free_port()
    gateway = start_twistd([TWISTD, "-n", "--pidfile=", "-y", str(TAC)],
                           env={"TXGATEWAY_LISTEN": listen_on(port)})
    gateway.wait_healthy(port)
    demo_chat(port)
    gateway.stop()


@pytest.mark.parametrize("how", ["subcommand", "tac"])
def test_config_error_fails_fast_and_names_the_value(
    start_twistd: Any, tmp_path: Path, how: str
) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "providers: {x: {plugin: openai, base_url: not-a-url}}\n"
        "models: [{name: m, provider: x}]\n"
    )
    if how == "subcommand":
        gateway = start_twistd(gateway_argv(TWISTD, free_port(), config))
    else:  # the .tac reads its config from TXGATEWAY_CONFIG
        gateway = start_twistd([TWISTD, "-n", "--pidfile=", "-y", str(TAC)],
                               env={"TXGATEWAY_CONFIG": str(config)})
    returncode = gateway.process.wait(START_TIMEOUT)
    assert returncode != 0
    assert "providers.x.base_url: expected a URL" in gateway.output()


def access_records(text: str) -> list[dict[str, Any]]:
    """The access log's JSON lines among twistd's own text log lines on stdout."""
    records = []
    for line in text.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if "route" in record:
                records.append(record)
    return records


def test_access_log_is_json_lines_on_stdout(start_twistd: Any) -> None:
    port = free_port()
    gateway = start_twistd(gateway_argv(TWISTD, port))
    gateway.wait_healthy(port)
    demo_chat(port)

    deadline = time.monotonic() + 5
    while not (records := access_records(gateway.stdout_path.read_text())):
        assert time.monotonic() < deadline, gateway.output()
        time.sleep(0.05)
    [record] = records
    assert record["route"] == "chat"
    assert record["model"] == "demo"
    assert record["status"] == 200
    assert record["input_tokens"] > 0
    assert record["output_tokens"] > 0
    assert record["duration_ms"] >= 0
    assert record["ttft_ms"] >= 0
