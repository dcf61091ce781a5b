"""
WebRTC calls through real sockets: the offer forwarded with the gateway's key, the answer and
call id back unchanged, the sideband opened by the gateway and tallied like a session, the
key's budget and the maximum duration enforced by hanging the call up, control calls passed
through under the call's own key.
"""

from __future__ import annotations

from typing import Any

import orjson
import treq

from tests.fake_realtime import USAGE
from tests.fake_realtime_calls import ANSWER, start_fake_calls
from tests.realtime_harness import RealtimeTestCase, until
from tests.test_realtime_keys import KEY, KEYS_CONFIG

OFFER = b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"


class CallTestCase(RealtimeTestCase):
    config = KEYS_CONFIG
    start_fake = staticmethod(start_fake_calls)

    async def call(self, key: str, body: bytes = OFFER, content_type: str = "application/sdp",
                   query: str = "?model=voice") -> Any:
        return await treq.post(self.base_url + "/v1/realtime/calls" + query, body,
                               pool=self.pool, headers={"authorization": f"Bearer {key}",
                                                        "content-type": content_type})

    async def control(self, key: str, path: str, body: bytes = b"{}") -> Any:
        return await treq.post(self.base_url + f"/v1/realtime/calls/{path}", body,
                               pool=self.pool, headers={"authorization": f"Bearer {key}",
                                                        "content-type": "application/json"})

    async def ended(self) -> dict[str, Any]:
        gateway = self.service.gateway
        await until(lambda: not gateway.realtime.active() and not gateway.ledger.pending)
        _, sessions = await self.admin("/admin/realtime/sessions")
        return sessions["recent"][0]

    def forwarded_session(self, index: int = 0) -> dict[str, Any]:
        body = self.fake.posts[index][2]
        return orjson.loads(body.split(b'name="session"')[1].split(b"\r\n\r\n", 1)[1]
                            .split(b"\r\n--")[0])


class CallTests(CallTestCase):
    async def test_a_call_is_answered_and_its_sideband_tallied_until_hangup(self) -> None:
        response = await self.call(KEY)
        self.assertEqual(response.code, 201)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["application/sdp"])
        self.assertEqual(response.headers.getRawHeaders("location"),
                         ["/v1/realtime/calls/rtc_fake0"])
        self.assertEqual(await response.content(), ANSWER)
        path, headers, body = self.fake.posts[0]
        self.assertEqual(path, "/v1/realtime/calls")
        self.assertEqual(headers["authorization"], "Bearer sk-upstream-secret")
        self.assertTrue(headers["content-type"].startswith("multipart/form-data; boundary="))
        self.assertIn(OFFER, body)
        self.assertEqual(self.forwarded_session(), {"type": "realtime", "model": "gpt-realtime"})
        [sideband] = self.fake.handshakes
        self.assertEqual(sideband.params, {"call_id": ["rtc_fake0"]})
        self.assertEqual(sideband.headers["authorization"], "Bearer sk-upstream-secret")
        _, sessions = await self.admin("/admin/realtime/sessions")
        [active] = sessions["active"]
        self.assertEqual((active["call_id"], active["key"]), ("rtc_fake0", "cfg_voice-team"))
        # A turn of the call, peer to peer, seen on the sideband.
        self.fake.sideband("rtc_fake0").respond({})
        await until(lambda: self.service.gateway.realtime.active()[0].tally.usage.total_tokens)
        hung_up = await self.control(KEY, "rtc_fake0/hangup")
        self.assertEqual(hung_up.code, 200)
        session = await self.ended()
        self.assertEqual(session["upstream_close_code"], 1000)
        self.assertIsNone(session["ended_by"])
        self.assertEqual([post[0] for post in self.fake.posts],
                         ["/v1/realtime/calls", "/v1/realtime/calls/rtc_fake0/hangup"])
        [row] = await self.service.gateway.store.usage_report("key")
        self.assertEqual((row["key"], row["input_tokens"], row["output_tokens"]),
                         ("cfg_voice-team", USAGE["input_tokens"], USAGE["output_tokens"]))
        self.assertGreater(row["cost_usd"], 0)
        self.assertIn('txgateway_realtime_tokens_total{cached="false",direction="output"',
                      await self.metrics())

    async def test_a_form_offer_under_a_client_secret_carries_its_config(self) -> None:
        minted = await treq.post(
            self.base_url + "/v1/realtime/client_secrets",
            orjson.dumps({"session": {"model": "voice", "instructions": "Be brief."}}),
            pool=self.pool, headers={"authorization": f"Bearer {KEY}"})
        secret = (await minted.json())["value"]
        form = (b'--b\r\nContent-Disposition: form-data; name="sdp"\r\n\r\n' + OFFER
                + b'\r\n--b\r\nContent-Disposition: form-data; name="session"\r\n\r\n'
                + b'{"type": "realtime", "audio": {"output": {"voice": "marin"}}}\r\n--b--\r\n')
        response = await self.call(secret, form, "multipart/form-data; boundary=b", "")
        self.assertEqual(response.code, 201, await response.content())
        self.assertEqual(self.forwarded_session(), {
            "type": "realtime", "model": "gpt-realtime", "instructions": "Be brief.",
            "audio": {"output": {"voice": "marin"}}})
        self.assertIn(OFFER, self.fake.posts[0][2])
        self.assertNotIn(secret, repr(self.fake.posts))
        # Another key cannot control the call; its own can.
        refused = await self.control("sk-broke", "rtc_fake0/refer",
                                     b'{"target_uri": "tel:+14155550123"}')
        self.assertEqual(refused.code, 404)
        referred = await self.control(secret, "rtc_fake0/refer",
                                      b'{"target_uri": "tel:+14155550123"}')
        self.assertEqual(referred.code, 200)
        path, headers, body = self.fake.posts[-1]
        self.assertEqual((path, headers["authorization"], body),
                         ("/v1/realtime/calls/rtc_fake0/refer", "Bearer sk-upstream-secret",
                          b'{"target_uri": "tel:+14155550123"}'))
        await self.control(secret, "rtc_fake0/hangup")
        await self.ended()

    async def test_refusals(self) -> None:
        cases = [("sk-wrong", OFFER, "?model=voice", 401, "invalid_api_key"),
                 (KEY, OFFER, "?model=demo", 403, "model_not_allowed"),
                 ("sk-broke", OFFER, "?model=demo", 400, "model_not_realtime"),
                 (KEY, OFFER, "", 400, "missing_model"),
                 (KEY, b"  ", "?model=voice", 400, "invalid_request"),
                 (KEY, b'--b\r\nContent-Disposition: form-data; name="sdp"\r\n\r\nv=0\r\n'
                  b'--b\r\nContent-Disposition: form-data; name="session"\r\n\r\n'
                  b'{"model": 7}\r\n--b--\r\n', "", 400, "invalid_value")]
        for key, body, query, status, code in cases:
            kind = "multipart/form-data; boundary=b" if body.startswith(b"--") else None
            response = await self.call(key, body, kind or "application/sdp", query)
            answer = await response.json()
            self.assertEqual((response.code, answer["error"]["code"]), (status, code), query)
        self.fake.refuse_offer = 400
        response = await self.call(KEY)
        self.assertEqual((response.code, (await response.json())["error"]["code"]),
                         (400, "bad_sdp"))
        self.assertEqual(self.fake.handshakes, [])
        self.assertEqual(self.service.gateway.realtime.active(), [])
        for path, status in [("rtc_unknown/hangup", 404), ("rtc_fake0/explode", 404)]:
            response = await self.control(KEY, path)
            self.assertEqual(response.code, status, path)


class CallGuardTests(CallTestCase):
    realtime = "{max_duration: 1}"

    async def test_a_spent_budget_hangs_the_call_up(self) -> None:
        response = await self.call("sk-broke")
        self.assertEqual(response.code, 201)
        self.fake.sideband("rtc_fake0").respond({})
        session = await self.ended()
        self.assertEqual(session["ended_by"], "key_budget_exceeded")
        await until(lambda: self.fake.closes)
        self.assertEqual(self.fake.closes[0][1], 1008)  # the sideband, closed by the gateway
        self.assertEqual(self.fake.posts[-1][0], "/v1/realtime/calls/rtc_fake0/hangup")

    async def test_the_maximum_duration_hangs_the_call_up(self) -> None:
        response = await self.call(KEY)
        self.assertEqual(response.code, 201)
        session = await self.ended()
        self.assertEqual(session["ended_by"], "session_max_duration")
        await until(lambda: len(self.fake.posts) == 2)
        self.assertEqual(self.fake.posts[1][0], "/v1/realtime/calls/rtc_fake0/hangup")
