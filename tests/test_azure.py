"""
The ``azure`` provider end to end: the openai SDK through the gateway to the fake OpenAI
upstream on Azure's chat paths, and WebSocket clients to the fake realtime upstream on
Azure's realtime paths.
"""

from __future__ import annotations

import openai

from tests.fake_openai import CONTENT, CONTENT_FILTER_RESULTS, PROMPT_FILTER_RESULTS
from tests.gateway_harness import GatewayTestCase
from tests.realtime_harness import RealtimeTestCase
from tests.test_chat import MESSAGES, collect_stream

CHAT_CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
access_log: {access_log}
upstream: {{connect_timeout: 1, first_byte_timeout: 1, idle_timeout: 0.5}}
providers:
  azure-v1:
    plugin: azure
    endpoint: http://127.0.0.1:{upstream_port}
    api_key: azure-upstream-key
    headers: {{x-team: blue}}
  azure-deployments:
    plugin: azure
    endpoint: http://127.0.0.1:{upstream_port}/
    api_key: azure-upstream-key
    api: deployments
    api_version: "2024-10-21"
  azure-entra:
    plugin: azure
    endpoint: http://127.0.0.1:{upstream_port}
    entra_token: eyJ-entra-access-token
models:
  - name: gpt-4o-mini
    provider: azure-v1
    model: my-deployment
  - name: deployed
    provider: azure-deployments
    model: my-deployment
  - name: "error-*"
    provider: azure-deployments
  - name: entra
    provider: azure-entra
    model: my-deployment
"""

#: Where each route's chat calls must land, and with which query.
EXPECTED = {
    "gpt-4o-mini": (b"/openai/v1/chat/completions", {}),
    "deployed": (b"/openai/deployments/my-deployment/chat/completions",
                 {b"api-version": [b"2024-10-21"]}),
}


class AzureChatTests(GatewayTestCase):
    config = CHAT_CONFIG

    def check_request(self, index: int, model: str) -> dict:
        """The fake got the call on Azure's path, with the provider's ``api-key`` only."""
        path, headers, body = self.fake.requests[index]
        self.assertEqual((path, self.fake.queries[index]), EXPECTED[model])
        self.assertEqual(headers[b"Api-Key"], [b"azure-upstream-key"])
        self.assertNotIn(b"Authorization", headers)
        self.assertEqual(body["model"], "my-deployment")
        return headers

    async def test_completion(self) -> None:
        """A plain answer comes back untouched, Azure's content filter results included."""
        for index, model in enumerate(EXPECTED):
            answer = await self.sdk(self.client.chat.completions.create, model=model,
                                    messages=MESSAGES)
            self.assertEqual(answer.choices[0].message.content, "".join(CONTENT))
            self.assertEqual(answer.model_extra["prompt_filter_results"],
                             PROMPT_FILTER_RESULTS)
            self.assertEqual(answer.choices[0].model_extra["content_filter_results"],
                             CONTENT_FILTER_RESULTS)
            self.check_request(index, model)
        self.assertEqual(self.fake.requests[0][1][b"X-Team"], [b"blue"])

    async def test_stream(self) -> None:
        """A stream is relayed chunk by chunk, the prompt's filter chunk first."""
        for index, model in enumerate(EXPECTED):
            stream = await self.sdk(self.client.chat.completions.create, model=model,
                                    messages=MESSAGES, stream=True)
            chunks = await self.sdk(collect_stream, stream)
            self.assertEqual(chunks[0].choices, [])
            self.assertEqual(chunks[0].model_extra["prompt_filter_results"],
                             PROMPT_FILTER_RESULTS)
            text = "".join(c.choices[0].delta.content or "" for c in chunks[1:])
            self.assertEqual(text, "".join(CONTENT))
            self.assertTrue(all(c.choices[0].model_extra["content_filter_results"]
                                == CONTENT_FILTER_RESULTS for c in chunks[1:]))
            self.check_request(index, model)
        records = self.access_records()
        self.assertEqual([r["provider"] for r in records], ["azure-v1", "azure-deployments"])
        self.assertEqual({(r["input_tokens"], r["output_tokens"]) for r in records}, {(11, 4)})

    async def test_entra_token(self) -> None:
        """An Entra ID token goes as a bearer token, and no api-key with it."""
        await self.sdk(self.client.chat.completions.create, model="entra", messages=MESSAGES)
        headers = self.fake.requests[0][1]
        self.assertEqual(headers[b"Authorization"], [b"Bearer eyJ-entra-access-token"])
        self.assertNotIn(b"Api-Key", headers)

    async def test_error(self) -> None:
        """An upstream error reaches the SDK as its own status, Retry-After kept."""
        with self.assertRaises(openai.RateLimitError) as caught:
            await self.sdk(self.client.chat.completions.create, model="error-429",
                           messages=MESSAGES)
        self.assertEqual(caught.exception.response.headers["retry-after"], "7")
        self.assertEqual(self.fake.requests[0][0],
                         b"/openai/deployments/error-429/chat/completions")


REALTIME_CONFIG = """
listen: "tcp:0:interface=127.0.0.1"
access_log: {access_log}
realtime: {realtime}
upstream:
  connect_timeout: 2
providers:
  azure-ga:
    plugin: azure
    endpoint: http://127.0.0.1:{upstream_port}
    api_key: azure-upstream-key
  azure-preview:
    plugin: azure
    endpoint: http://127.0.0.1:{upstream_port}
    api_key: azure-upstream-key
    realtime_api: preview
    api_version: 2024-10-01-preview
models:
  - name: voice
    provider: azure-ga
    model: my-realtime
  - name: voice-preview
    provider: azure-preview
    model: my-realtime
  - name: gpt-4o-transcribe
    provider: azure-preview
"""


class AzureRealtimeTests(RealtimeTestCase):
    config = REALTIME_CONFIG

    def check_credentials(self) -> dict[str, str]:
        """The fake got the provider's ``api-key``, and nothing of the caller's key."""
        handshake = self.fake.handshakes[0]
        self.assertEqual(handshake.headers["api-key"], "azure-upstream-key")
        self.assertNotIn("authorization", handshake.headers)
        seen = repr((handshake.headers, handshake.protocols, handshake.params))
        self.assertNotIn("sk-caller", seen)
        return handshake.headers

    async def test_ga(self) -> None:
        """GA: ``/openai/v1/realtime?model=<deployment>``, no api-version; a turn relays."""
        client = await self.connect("model=voice",
                                    headers={"Authorization": "Bearer sk-caller"})
        await client.next("session.created")
        client.send_event(type="response.create")
        done = await client.next("response.done")
        self.assertEqual(done["response"]["status"], "completed")
        handshake = self.fake.handshakes[0]
        self.assertEqual(handshake.path, "/openai/v1/realtime")
        self.assertEqual(handshake.params, {"model": ["my-realtime"]})
        self.assertNotIn("openai-beta", self.check_credentials())

    async def test_preview_beta(self) -> None:
        """
        Preview: ``/openai/realtime?api-version=...&deployment=<deployment>``; a beta caller's
        interface is asked for, its browser key subprotocol never passed on.
        """
        client = await self.connect("model=voice-preview", protocols=[
            "realtime", "openai-insecure-api-key.sk-caller", "openai-beta.realtime-v1"])
        await client.next("session.created")
        handshake = self.fake.handshakes[0]
        self.assertEqual(handshake.path, "/openai/realtime")
        self.assertEqual(handshake.params, {"api-version": ["2024-10-01-preview"],
                                            "deployment": ["my-realtime"]})
        self.assertEqual(self.check_credentials()["openai-beta"], "realtime=v1")

    async def test_preview_transcription(self) -> None:
        """A transcription session names no deployment upstream, only its intent."""
        client = await self.connect("intent=transcription",
                                    headers={"Authorization": "Bearer sk-caller"})
        await client.next("session.created")
        self.assertEqual(self.fake.handshakes[0].params, {
            "api-version": ["2024-10-01-preview"], "intent": ["transcription"]})
        self.check_credentials()
