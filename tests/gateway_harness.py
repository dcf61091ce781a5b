"""Runs a real gateway and a fake OpenAI upstream on loopback ports, for end-to-end tests."""

from __future__ import annotations

import os
import secrets
import tempfile
from typing import Any
from urllib.parse import quote

import attrs
import openai
import orjson
import psycopg
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool

from tests.fake_anthropic import start_fake_anthropic
from tests.fake_openai import start_fake_openai
from tests.test_store import POSTGRES_URL
from txgateway.config import GatewayConfig, load_config
from txgateway.providers.registry import find_plugins
from txgateway.service import GatewayService

CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
access_log: {access_log}
max_body_bytes: 65536
upstream:
  connect_timeout: 1
  first_byte_timeout: 1
  idle_timeout: 0.5
providers:
  fake:
    plugin: openai
    base_url: http://127.0.0.1:{upstream_port}/v1
    api_key: sk-upstream-secret
    headers:
      x-team: blue
  nowhere:
    plugin: openai
    base_url: http://127.0.0.1:{closed_port}/v1
  demo:
    plugin: demo
    chunk_delay: 0
  claude:
    plugin: anthropic
    base_url: http://127.0.0.1:{anthropic_port}
    api_key: sk-ant-upstream
    beta: tools-2024-04-04
    default_max_tokens: 512
models:
  - name: demo
    provider: demo
  - name: renamed
    provider: fake
    model: upstream-name
  - name: unreachable
    provider: nowhere
  - name: "claude-renamed*"
    provider: claude
    model: claude-upstream
  - name: "claude-*"
    provider: claude
  - name: "*"
    provider: fake
"""


def with_own_store(config: GatewayConfig, directory: str) -> GatewayConfig:
    """A test gateway keeps its ledger and keys in its own SQLite file, unless told otherwise."""
    if config.store == GatewayConfig.__attrs_attrs__.store.default:
        config = attrs.evolve(config, store="sqlite:" + os.path.join(directory, "store.db"))
    return config


def closed_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class OnPostgreSQL:
    """
    Mixed in before a `GatewayTestCase`: the gateway keeps its store in a fresh PostgreSQL
    schema of its own (``self.schema``), dropped after the test, as scaled-out gateways do.
    """

    config: str

    def setUp(self) -> Any:
        self.schema = "t_" + secrets.token_hex(6)
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"CREATE SCHEMA {self.schema}")
        self.addCleanup(self._drop_schema)  # type: ignore[attr-defined]
        options = quote(f"-csearch_path={self.schema}", safe="")
        self.config = self.config + f'store: "{POSTGRES_URL}?options={options}"\n'
        return super().setUp()  # type: ignore[misc]

    def _drop_schema(self) -> None:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {self.schema} CASCADE")


class GatewayTestCase(TestCase):
    """Each test gets a fresh fake upstream, a fresh gateway and an openai SDK client."""

    #: The gateway's config, formatted with the upstreams' ports and the access log's path.
    config = CONFIG

    def setUp(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        self.fake, self.fake_port, self.fake_site = await start_fake_openai()
        self.claude, self.claude_port, self.claude_site = await start_fake_anthropic()
        log_dir = tempfile.mkdtemp()
        self.access_log_path = os.path.join(log_dir, "access.log")
        config = load_config(self.config.format(
            upstream_port=self.fake_port.getHost().port, closed_port=closed_port(),
            anthropic_port=self.claude_port.getHost().port,
            access_log=self.access_log_path), find_plugins)
        self.service = GatewayService(with_own_store(config, log_dir), reactor)
        self.service.startService()
        port = (await self.service.listening).getHost().port
        self.base_url = f"http://127.0.0.1:{port}"
        self.client = openai.OpenAI(base_url=self.base_url + "/v1", api_key="sk-caller",
                                    max_retries=0, timeout=10)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(self._stop)

    async def _stop(self) -> None:
        self.client.close()
        await self.service.stopService()
        await self.fake_port.stopListening()
        await self.fake_site.close_connections()
        await self.claude_port.stopListening()
        await self.claude_site.close_connections()

    def sdk(self, function: Any, *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Call the (blocking) openai SDK in a thread while the reactor serves."""
        return deferToThread(function, *args, **kwargs)

    async def post(self, path: str, body: bytes, **kwargs: Any) -> Any:
        return await treq.post(self.base_url + path, body, pool=self.pool,
                               headers={b"content-type": [b"application/json"]}, **kwargs)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """The ``/metrics`` samples by (name, sorted labels)."""
        response = await treq.get(self.base_url + "/metrics", pool=self.pool)
        samples = {}
        for family in text_string_to_metric_families((await response.text()).strip() + "\n"):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    async def check_upstream_dropped(self, fake: Any, model: str) -> None:
        """The client just left: the upstream sees it at once, and the log keeps an estimate."""
        started = reactor.seconds()
        self.assertEqual(await fake.wait_for_disconnect(), model)
        self.assertLess(reactor.seconds() - started, 0.5)
        await deferLater(reactor, 0.05)
        [record] = self.access_records()
        self.assertEqual(record["status"], 499)
        self.assertTrue(record["usage_estimated"])
        self.assertGreater(record["input_tokens"], 0)

    async def ledger_written(self) -> None:
        """Wait for the ledger's next flush to have written every record."""
        ledger = self.service.gateway.ledger
        for _ in range(100):
            if not ledger.pending:
                return
            await deferLater(reactor, 0.05)
        self.fail(f"{ledger.pending} records still unwritten")

    def access_records(self) -> list[dict[str, Any]]:
        self.service.access_log.flush()
        with open(self.access_log_path, "rb") as log:
            return [orjson.loads(line) for line in log]
