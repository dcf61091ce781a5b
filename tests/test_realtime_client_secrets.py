"""
Ephemeral keys through real sockets: issued by ``POST /v1/realtime/client_secrets`` (with the
openai SDK), redeemed by a browser-style or SDK upgrade, refused before the upgrade when
expired, revoked or over budget, and billed to the key they were issued under.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import orjson
import treq
from twisted.internet.threads import deferToThread

from tests.realtime_harness import RealtimeTestCase, until
from tests.test_realtime import refused
from tests.test_realtime_keys import KEY, KEYS_CONFIG
from txgateway.auth import ANONYMOUS
from txgateway.realtime.client_secrets import KIND, issue
from txgateway.store import hash_key

INSTRUCTIONS = "Answer in French."


def sdk_secret_session(base_url: str) -> tuple[Any, list[str]]:
    """A secret minted with the SDK under `KEY`, then a session opened with it alone."""

    async def run() -> tuple[Any, list[str]]:
        holder = openai.AsyncOpenAI(base_url=base_url, api_key=KEY)
        secret = await holder.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 60},
            session={"type": "realtime", "model": "voice", "instructions": INSTRUCTIONS})
        await holder.close()
        browser = openai.AsyncOpenAI(base_url=base_url, api_key=secret.value)
        seen = []
        async with browser.realtime.connect(model="voice") as connection:
            await connection.response.create()
            async for event in connection:
                seen.append(event.type)
                if event.type == "response.done":
                    break
        await browser.close()
        return secret, seen

    return asyncio.run(run())


class ClientSecretTests(RealtimeTestCase):
    config = KEYS_CONFIG.replace("keys:\n", "keys:\n  - name: wide\n    key: sk-wide\n")

    async def mint(self, key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        response = await treq.post(self.base_url + "/v1/realtime/client_secrets",
                                   orjson.dumps(body), pool=self.pool,
                                   headers={"authorization": f"Bearer {key}",
                                            "content-type": "application/json"})
        return response.code, await response.json()

    def upgrade_refused(self, secret: str, query: str = "model=voice") -> Any:
        return deferToThread(refused, f"ws://127.0.0.1:{self.port}/v1/realtime?{query}",
                             subprotocols=["realtime", f"openai-insecure-api-key.{secret}"])

    async def finish(self, client: Any) -> None:
        client.sendClose(1000)
        await self.clients[-1][1].closed
        gateway = self.service.gateway
        await until(lambda: not gateway.realtime.active() and not gateway.ledger.pending)

    async def test_the_sdk_mints_a_secret_and_a_session_opens_with_it_alone(self) -> None:
        secret, seen = await deferToThread(sdk_secret_session, self.base_url + "/v1")
        self.assertTrue(secret.value.startswith("ek_"))
        self.assertEqual(secret.session.type, "realtime")
        self.assertIn("response.done", seen)
        [handshake] = self.fake.handshakes
        self.assertEqual(handshake.headers["authorization"], "Bearer sk-upstream-secret")
        self.assertEqual(handshake.params["model"], ["gpt-realtime"])
        # The issued config reaches the upstream before the caller's first event.
        update, create = self.fake.received[:2]
        self.assertEqual(update["type"], "session.update")
        self.assertEqual(update["session"], {"type": "realtime", "instructions": INSTRUCTIONS})
        self.assertEqual(create["type"], "response.create")
        # Only the hash is kept, under the key it was issued for; the session is its ledger's.
        gateway = self.service.gateway
        held = await gateway.store.get_object(KIND, hash_key(secret.value))
        self.assertEqual((held["key_id"], held["key_hash"]), ("cfg_voice-team", hash_key(KEY)))
        self.assertNotIn(secret.value.encode(), orjson.dumps(held))
        await until(lambda: not gateway.realtime.active() and not gateway.ledger.pending)
        [row] = await gateway.store.usage_report("key")
        self.assertEqual((row["key"], row["requests"]), ("cfg_voice-team", 1))
        self.assertGreater(row["cost_usd"], 0)

    async def test_a_browser_opens_a_transcription_session_from_its_secret(self) -> None:
        status, minted = await self.mint("sk-wide", {"session": {"type": "transcription"}})
        self.assertEqual(status, 200)
        self.assertEqual(minted["session"]["object"], "realtime.transcription_session")
        self.assertGreater(minted["expires_at"], self.service.gateway.reactor.seconds() + 590)
        client = await self.connect(query="", protocols=[
            "realtime", f"openai-insecure-api-key.{minted['value']}"])
        await client.next("session.created")
        [handshake] = self.fake.handshakes
        self.assertEqual(handshake.params["intent"], ["transcription"])
        self.assertNotIn(minted["value"], repr(handshake))
        self.assertEqual(self.fake.received, [])  # nothing to apply beyond its type
        await self.finish(client)

    async def test_bad_requests_and_models_outside_the_key_are_refused(self) -> None:
        cases = [
            (KEY, {"session": {"type": "realtime", "model": "demo"}}, 403, "model_not_allowed"),
            ("sk-wide", {"session": {"model": "nothing"}}, 404, "model_not_found"),
            ("sk-wide", {"expires_after": {"seconds": 5}}, 400, "invalid_value"),
            ("sk-wide", {"expires_after": {"seconds": "60"}}, 400, "invalid_value"),
            ("sk-wide", {"session": {"type": "speech"}}, 400, "invalid_value"),
            ("sk-wrong", {}, 401, "invalid_api_key"),
        ]
        for key, body, status, code in cases:
            answer = await self.mint(key, body)
            self.assertEqual((answer[0], answer[1]["error"]["code"]), (status, code), body)
        # A secret is not a key for minting more, nor for the REST API.
        _, minted = await self.mint(KEY, {})
        answer = await self.mint(minted["value"], {})
        self.assertEqual(answer[0], 401)
        # Bound to its model: another one named on the upgrade is refused.
        _, minted = await self.mint("sk-wide", {"session": {"model": "voice"}})
        answer = await self.upgrade_refused(minted["value"], "model=demo")
        self.assertEqual((answer[0], answer[1]["error"]["code"]),
                         (400, "client_secret_model_mismatch"))
        self.assertEqual(self.fake.handshakes, [])

    async def test_an_expired_secret_is_refused_and_forgotten(self) -> None:
        gateway = self.service.gateway
        now = gateway.reactor.seconds()
        value, secret = await issue(gateway.store, ANONYMOUS, "sk-wide", now - 1,
                                    {"type": "realtime", "model": "voice"}, now - 61)
        answer = await self.upgrade_refused(value)
        self.assertEqual((answer[0], answer[1]["error"]["code"]),
                         (401, "client_secret_expired"))
        self.assertIsNone(await gateway.store.get_object(KIND, secret.hash))
        answer = await self.upgrade_refused("ek_never-issued")
        self.assertEqual((answer[0], answer[1]["error"]["code"]), (401, "invalid_api_key"))

    async def test_revoking_the_key_revokes_its_secrets(self) -> None:
        headers = {"authorization": "Bearer admin-secret", "content-type": "application/json"}
        response = await treq.post(self.base_url + "/admin/keys", b'{"name": "kiosk"}',
                                   headers=headers, pool=self.pool)
        made = await response.json()
        status, minted = await self.mint(made["key"], {"session": {"model": "voice"}})
        self.assertEqual(status, 200)
        client = await self.connect(headers={"Authorization": f"Bearer {minted['value']}"})
        await client.next("session.created")
        await self.finish(client)
        response = await treq.delete(self.base_url + f"/admin/keys/{made['id']}",
                                     headers=headers, pool=self.pool)
        self.assertEqual(response.code, 200)
        answer = await self.upgrade_refused(minted["value"])
        self.assertEqual((answer[0], answer[1]["error"]["code"]),
                         (401, "client_secret_revoked"))

    async def test_a_spent_budget_refuses_the_secret_and_new_ones(self) -> None:
        _, minted = await self.mint("sk-broke", {"session": {"model": "demo"}})
        client = await self.connect(query="", protocols=[
            "realtime", f"openai-insecure-api-key.{minted['value']}"])
        await client.next("session.created")
        client.send_event(type="response.create")
        await client.next("response.done")
        await self.finish(client)
        answer = await self.upgrade_refused(minted["value"], "")
        self.assertEqual((answer[0], answer[1]["error"]["code"]), (429, "budget_exceeded"))
        self.assertIn("Budget exceeded", answer[1]["error"]["message"])
        answer = await self.mint("sk-broke", {})
        self.assertEqual((answer[0], answer[1]["error"]["code"]), (429, "rate_limit_exceeded"))
