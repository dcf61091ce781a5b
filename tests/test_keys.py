"""Virtual keys, limits, budgets and the ledger, through a running gateway."""

from __future__ import annotations

import hashlib
import secrets

import anthropic
import attrs
import openai
import orjson
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.gateway_harness import CONFIG, GatewayTestCase, OnPostgreSQL
from txgateway.auth import KeyAuthenticator
from txgateway.config import load_config
from txgateway.providers.registry import find_plugins
from txgateway.service import GatewayService

ADMIN = "admin-secret"
TEAM_KEY = "sk-team-0123456789"
DEMO_ONLY_KEY = "sk-demo-only-99"

KEYS_CONFIG = CONFIG + f"""
admin:
  token: {ADMIN}
prices:
  priced:
    input: 1000000
    output: 1000000
keys:
  - name: team
    key: {TEAM_KEY}
  - name: demo-only
    hash: {hashlib.sha256(DEMO_ONLY_KEY.encode()).hexdigest()}
    models: ["demo"]
"""


class KeyTests(GatewayTestCase):
    config = KEYS_CONFIG

    def chat(self, key: str, model: str = "gpt-ok") -> openai.types.chat.ChatCompletion:
        client = openai.OpenAI(base_url=self.base_url + "/v1", api_key=key, max_retries=0)
        self.addCleanup(client.close)
        return self.sdk(client.chat.completions.create, model=model,
                        messages=[{"role": "user", "content": "hi"}])

    async def admin(self, method: str, path: str, body: object = None) -> tuple[int, object]:
        response = await treq.request(
            method, self.base_url + path, data=None if body is None else orjson.dumps(body),
            headers={b"authorization": [b"Bearer " + ADMIN.encode()]}, pool=self.pool)
        return response.code, orjson.loads(await response.content())

    async def test_a_declared_key_lets_its_caller_in(self) -> None:
        completion = await self.chat(TEAM_KEY)
        self.assertEqual(completion.choices[0].message.content, "Hello there!")
        [record] = self.access_records()
        self.assertEqual(record["key_id"], "cfg_team")
        self.assertNotIn(TEAM_KEY, open(self.access_log_path).read())

    async def test_no_key_or_a_wrong_one_is_401_in_each_dialect(self) -> None:
        with self.assertRaises(openai.AuthenticationError) as caught:
            await self.chat("sk-wrong")
        self.assertEqual(caught.exception.code, "invalid_api_key")
        response = await self.post("/v1/chat/completions", b'{"model": "gpt-ok", '
                                   b'"messages": [{"role": "user", "content": "hi"}]}')
        self.assertEqual(response.code, 401)
        claude = anthropic.Anthropic(base_url=self.base_url, api_key="sk-wrong", max_retries=0)
        self.addCleanup(claude.close)
        with self.assertRaises(anthropic.AuthenticationError) as refused:
            await self.sdk(claude.messages.create, model="claude-x", max_tokens=5,
                           messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(refused.exception.body["type"], "error")
        self.assertEqual(self.fake.requests, [])

    async def test_a_key_calls_only_its_models(self) -> None:
        completion = await self.chat(DEMO_ONLY_KEY, "demo")
        self.assertTrue(completion.choices[0].message.content)
        with self.assertRaises(openai.PermissionDeniedError) as caught:
            await self.chat(DEMO_ONLY_KEY, "gpt-ok")
        self.assertEqual(caught.exception.code, "model_not_allowed")

    async def test_keys_made_changed_and_revoked_through_the_admin_api(self) -> None:
        status, made = await self.admin("POST", "/admin/keys", {
            "name": "ci", "models": ["gpt-*"], "requests_per_minute": 100,
            "metadata": {"team": "blue"}})
        self.assertEqual(status, 201)
        secret = made["key"]
        self.assertTrue(secret.startswith("sk-gw-"))
        self.assertEqual(made["prefix"], secret[:8])
        completion = await self.chat(secret)
        self.assertEqual(completion.choices[0].message.content, "Hello there!")

        status, listed = await self.admin("GET", "/admin/keys")
        self.assertEqual(status, 200)
        names = {key["name"]: key for key in listed["data"]}
        self.assertEqual(set(names), {"team", "demo-only", "ci"})
        self.assertNotIn(secret, orjson.dumps(listed).decode())
        self.assertNotIn("hash", names["ci"])

        status, changed = await self.admin("PATCH", f"/admin/keys/{made['id']}",
                                           {"models": ["demo"]})
        self.assertEqual((status, changed["allowed_models"]), (200, ["demo"]))
        with self.assertRaises(openai.PermissionDeniedError):
            await self.chat(secret)

        status, revoked = await self.admin("DELETE", f"/admin/keys/{made['id']}")
        self.assertEqual(status, 200)
        self.assertIsNotNone(revoked["revoked_at"])
        with self.assertRaises(openai.AuthenticationError):
            await self.chat(secret, "demo")

    async def test_admin_key_input_is_checked(self) -> None:
        status, refused = await self.admin("POST", "/admin/keys", {"requests_per_minute": "x"})
        self.assertEqual(status, 400)
        self.assertIn("requests_per_minute", refused["error"]["message"])
        status, refused = await self.admin("POST", "/admin/keys", {"colour": "red"})
        self.assertEqual(status, 400)
        status, _ = await self.admin("PATCH", "/admin/keys/cfg_team", {"name": "x"})
        self.assertEqual(status, 409)
        status, _ = await self.admin("GET", "/admin/keys/key_nope")
        self.assertEqual(status, 404)

    async def test_requests_per_minute_refuse_with_429_and_headers(self) -> None:
        _, made = await self.admin("POST", "/admin/keys", {"requests_per_minute": 2})
        client = openai.OpenAI(base_url=self.base_url + "/v1", api_key=made["key"],
                               max_retries=0)
        self.addCleanup(client.close)
        create = client.chat.completions.with_raw_response.create
        messages = [{"role": "user", "content": "hi"}]
        first = await self.sdk(create, model="gpt-ok", messages=messages)
        self.assertEqual(first.headers["x-ratelimit-limit-requests"], "2")
        self.assertEqual(first.headers["x-ratelimit-remaining-requests"], "1")
        await self.sdk(create, model="gpt-ok", messages=messages)
        with self.assertRaises(openai.RateLimitError) as caught:
            await self.sdk(create, model="gpt-ok", messages=messages)
        refusal = caught.exception.response
        self.assertEqual(refusal.headers["x-ratelimit-remaining-requests"], "0")
        self.assertGreaterEqual(int(refusal.headers["retry-after"]), 1)
        self.assertEqual(caught.exception.code, "rate_limit_exceeded")
        self.assertEqual(len(self.fake.requests), 2)

    async def test_passthrough_is_under_the_same_keys_and_limits(self) -> None:
        _, made = await self.admin("POST", "/admin/keys", {"requests_per_minute": 1})
        url = self.base_url + "/p/fake/echo"
        response = await treq.get(url, pool=self.pool)
        self.assertEqual(response.code, 401)
        headers = {b"authorization": [b"Bearer " + made["key"].encode()]}
        response = await treq.get(url, headers=headers, pool=self.pool)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"x-ratelimit-remaining-requests"),
                         [b"0"])
        await response.content()
        response = await treq.get(url, headers=headers, pool=self.pool)
        self.assertEqual(response.code, 429)
        self.assertEqual((await response.json())["error"]["code"], "rate_limit_exceeded")

    async def test_a_spent_budget_refuses_further_calls(self) -> None:
        _, made = await self.admin("POST", "/admin/keys", {"budget_usd": 5,
                                                           "budget_period": "day"})
        # "priced" costs a dollar a token: the fake's 11 + 4 tokens cost $15.
        await self.chat(made["key"], "priced")
        with self.assertRaises(openai.RateLimitError) as caught:
            await self.chat(made["key"], "priced")
        self.assertEqual(caught.exception.code, "budget_exceeded")
        status, shown = await self.admin("GET", f"/admin/keys/{made['id']}")
        self.assertEqual((status, shown["spent_usd"]), (200, 15.0))
        samples = await self.metrics()
        cost = samples[("txgateway_gen_ai_client_cost_usd_total", (
            ("model", "priced"), ("provider", "fake"), ("route", "chat")))]
        self.assertEqual(cost, 15.0)

    async def test_a_key_without_a_budget_shows_its_spend(self) -> None:
        _, made = await self.admin("POST", "/admin/keys", {"name": "unbudgeted"})
        await self.chat(made["key"], "priced")
        await self.chat(TEAM_KEY, "priced")
        await self.ledger_written()
        for key_id in (made["id"], "cfg_team"):
            status, shown = await self.admin("GET", f"/admin/keys/{key_id}")
            self.assertEqual((status, shown["spent_usd"]), (200, 15.0))

    async def test_the_ledger_answers_the_usage_api(self) -> None:
        await self.chat(TEAM_KEY)
        await self.chat(TEAM_KEY, "priced")
        await self.chat(DEMO_ONLY_KEY, "demo")
        await self.ledger_written()
        status, report = await self.admin("GET", "/admin/usage?group_by=key")
        self.assertEqual(status, 200)
        rows = {row["key"]: row for row in report["data"]}
        self.assertEqual(rows["cfg_team"]["requests"], 2)
        self.assertEqual(rows["cfg_team"]["input_tokens"], 22)
        self.assertEqual(rows["cfg_team"]["cost_usd"], 15.0)
        self.assertEqual(rows["cfg_demo-only"]["requests"], 1)
        status, report = await self.admin("GET", "/admin/usage?group_by=model&bucket=hour"
                                                 "&from=2020-01-01T00:00:00")
        self.assertEqual(status, 200)
        self.assertEqual({row["model"] for row in report["data"]}, {"gpt-ok", "priced", "demo"})
        status, _ = await self.admin("GET", "/admin/usage?group_by=colour")
        self.assertEqual(status, 400)

    async def test_readiness_reports_the_store_and_limiter(self) -> None:
        response = await treq.get(self.base_url + "/health/ready", pool=self.pool)
        document = orjson.loads(await response.content())
        self.assertEqual(response.code, 200)
        self.assertTrue(document["checks"]["store"])
        self.assertTrue(document["checks"]["limiter"])

    async def test_reload_swaps_routes_and_keeps_calls_under_way(self) -> None:
        gateway = self.service.gateway
        text = self.config.format(
            upstream_port=self.fake_port.getHost().port, closed_port=1,
            anthropic_port=self.claude_port.getHost().port, access_log=self.access_log_path)
        changed = text.replace("models:\n", "models:\n  - name: added\n    provider: demo\n")
        configs = [changed, text + "\nbogus: 1\n"]
        gateway.config_source = lambda: attrs.evolve(
            load_config(configs.pop(0), find_plugins), store=gateway.config.store)
        stream = await self.sdk(
            openai.OpenAI(base_url=self.base_url + "/v1", api_key=TEAM_KEY,
                          max_retries=0).chat.completions.create,
            model="slow-stream", messages=[{"role": "user", "content": "hi"}], stream=True)
        chunks = iter(stream)
        await self.sdk(next, chunks)
        status, answer = await self.admin("POST", "/admin/reload")
        self.assertEqual((status, answer), (200, {"status": "reloaded"}))
        # The stream that began before the reload goes on after it.
        self.assertTrue((await self.sdk(next, chunks)).choices)
        await self.sdk(stream.close)
        completion = await self.chat(TEAM_KEY, "added")
        self.assertTrue(completion.choices[0].message.content)
        status, refused = await self.admin("POST", "/admin/reload")
        self.assertEqual(status, 400)
        self.assertEqual(refused["error"]["problems"], ["bogus: unknown key"])
        self.assertTrue((await self.chat(TEAM_KEY, "added")).choices[0].message.content)


class OpenGatewayTests(GatewayTestCase):
    async def test_without_keys_every_caller_is_let_in(self) -> None:
        self.assertTrue(self.service.gateway.authenticator.open)
        completion = await self.sdk(self.client.chat.completions.create, model="gpt-ok",
                                    messages=[{"role": "user", "content": "hi"}])
        self.assertEqual(completion.choices[0].message.content, "Hello there!")
        await deferLater(reactor, 0)
        [record] = self.access_records()
        self.assertIsNone(record["key_id"])


class ScaledOutKeyTests(OnPostgreSQL, KeyTests):
    """The same, on PostgreSQL (a schema of its own) and the Redis limiter."""

    def setUp(self) -> object:
        self.config = KEYS_CONFIG + (
            f'limiter: "redis://127.0.0.1:6379/0?prefix=txgateway-test-{secrets.token_hex(6)}:"\n')
        return super().setUp()


class OpenGatewayOnPostgreSQL(OnPostgreSQL, GatewayTestCase):
    """
    Two gateway processes on one PostgreSQL store, both started with no keys: the first key
    made through one closes the other within its refresh interval (10 s, here 0.3 s), and
    that key's limits apply there.
    """

    config = CONFIG + f"admin:\n  token: {ADMIN}\n"

    def setUp(self) -> object:
        self.patch(KeyAuthenticator, "cache_seconds", 0.3)
        return super().setUp()

    async def _other_gateway(self) -> str:
        other = GatewayService(self.service.gateway.config, reactor)
        other.startService()
        self.addCleanup(other.stopService)
        return f"http://127.0.0.1:{(await other.listening).getHost().port}"

    async def _chat(self, key: str) -> int:
        response = await treq.post(
            self.base_url + "/v1/chat/completions", orjson.dumps(
                {"model": "gpt-ok", "messages": [{"role": "user", "content": "hi"}]}),
            headers={b"authorization": [b"Bearer " + key.encode()]}, pool=self.pool)
        await response.content()
        return response.code

    async def test_the_first_key_made_elsewhere_closes_this_one(self) -> None:
        other = await self._other_gateway()
        self.assertEqual(await self._chat("sk-anyone"), 200)  # open: no key anywhere
        response = await treq.post(other + "/admin/keys", orjson.dumps(
            {"name": "first", "requests_per_minute": 1}),
            headers={b"authorization": [b"Bearer " + ADMIN.encode()]}, pool=self.pool)
        made = orjson.loads(await response.content())
        self.assertEqual(response.code, 201)
        await deferLater(reactor, 0.4)
        self.assertEqual(await self._chat("sk-anyone"), 401)
        self.assertEqual(await self._chat(made["key"]), 200)
        self.assertEqual(await self._chat(made["key"]), 429)  # its limit applies here too
