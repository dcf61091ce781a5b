"""Realtime sessions under keys: refusals before the upgrade, and the session in the ledger."""

from __future__ import annotations

from twisted.internet.threads import deferToThread

from tests.fake_realtime import USAGE
from tests.realtime_harness import CONFIG, RealtimeTestCase, until
from tests.test_realtime import AUDIO, refused

KEY = "sk-voice-team"

KEYS_CONFIG = CONFIG + f"""
keys:
  - name: voice-team
    key: {KEY}
    models: ["voice"]
  - name: broke
    key: sk-broke
    budget_usd: 0.000001
prices:
  demo:
    input: 1000000
    output: 1000000
  gpt-realtime:
    input: 1000000
    audio_input: 2000000
    output: 3000000
    audio_output: 4000000
    cached_input: 500000
"""


class RealtimeKeyTests(RealtimeTestCase):
    config = KEYS_CONFIG

    async def test_bad_keys_and_models_are_refused_before_the_upgrade(self) -> None:
        base = f"ws://127.0.0.1:{self.port}/v1/realtime?model="
        cases = [({}, "voice", 401, "invalid_api_key"),
                 ({"Authorization": "Bearer sk-wrong"}, "voice", 401, "invalid_api_key"),
                 ({"Authorization": f"Bearer {KEY}"}, "demo", 403, "model_not_allowed")]
        for headers, model, status, code in cases:
            answer = await deferToThread(refused, base + model, additional_headers=headers)
            self.assertEqual((answer[0], answer[1]["error"]["code"]), (status, code))
        answer = await deferToThread(
            refused, base + "voice",
            subprotocols=["realtime", "openai-insecure-api-key.sk-wrong"])
        self.assertEqual(answer[0], 401)
        self.assertEqual(self.fake.handshakes, [])

    async def test_a_spent_budget_is_refused_before_the_upgrade(self) -> None:
        client = await self.connect(query="model=demo",
                                    headers={"Authorization": "Bearer sk-broke"})
        await client.next("session.created")
        client.send_event(type="response.create")
        await client.next("response.done")
        client.sendClose(1000)
        await self.clients[0][1].closed
        await until(lambda: not self.service.gateway.realtime.active())
        base = f"ws://127.0.0.1:{self.port}/v1/realtime?model=demo"
        answer = await deferToThread(refused, base,
                                     additional_headers={"Authorization": "Bearer sk-broke"})
        # The code REST calls get for a spent budget: one admission step for both.
        self.assertEqual((answer[0], answer[1]["error"]["code"]), (429, "budget_exceeded"))

    async def test_the_session_is_one_ledger_record_with_its_cost(self) -> None:
        client = await self.connect(headers={"Authorization": f"Bearer {KEY}"})
        await client.next("session.created")
        client.send_event(type="input_audio_buffer.append", audio=AUDIO)
        client.send_event(type="input_audio_buffer.commit")
        client.send_event(type="response.create")
        await client.next("response.done")
        client.sendClose(1000)
        await self.clients[0][1].closed
        gateway = self.service.gateway
        await until(lambda: not gateway.realtime.active() and not gateway.ledger.pending)
        [row] = await gateway.store.usage_report("key")
        details = USAGE["input_token_details"]
        cached = details["cached_tokens_details"]
        output = USAGE["output_token_details"]
        expected = ((details["text_tokens"] - cached["text_tokens"]) * 1
                    + (details["audio_tokens"] - cached["audio_tokens"]) * 2
                    + (cached["text_tokens"] + cached["audio_tokens"]) * 0.5
                    + output["text_tokens"] * 3 + output["audio_tokens"] * 4)
        self.assertEqual(row["key"], "cfg_voice-team")
        self.assertEqual(row["requests"], 1)
        self.assertEqual(row["input_tokens"], USAGE["input_tokens"])
        self.assertEqual(row["output_tokens"], USAGE["output_tokens"])
        self.assertAlmostEqual(row["cost_usd"], expected, places=6)
