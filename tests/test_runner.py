"""The call pipeline's attempts: jittered backoff and the upstream's ``Retry-After``."""

from __future__ import annotations

import openai
import orjson
import treq
from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase

from tests.gateway_harness import CONFIG, GatewayTestCase
from txgateway.config import RoutingSettings
from txgateway.upstream import UpstreamRefusedAttempt, UpstreamTimeout
from txgateway.web.runner import retry_wait

SETTINGS = RoutingSettings(retries=3, retry_backoff=0.2, max_retry_after=2.0)


class RetryWaitTests(SynchronousTestCase):
    def test_the_backoff_doubles_and_is_jittered_around_its_value(self) -> None:
        timeout = UpstreamTimeout("slow")
        self.assertEqual([retry_wait(SETTINGS, retry, timeout, lambda: 0.5)
                          for retry in range(3)], [0.2, 0.4, 0.8])
        self.assertAlmostEqual(retry_wait(SETTINGS, 0, timeout, lambda: 0.0) or 0, 0.1)
        self.assertAlmostEqual(retry_wait(SETTINGS, 1, timeout, lambda: 0.999) or 0, 0.5996)

    def test_a_retry_after_within_the_limit_is_waited_for(self) -> None:
        busy = UpstreamRefusedAttempt(503, 1.5)
        self.assertEqual(retry_wait(SETTINGS, 0, busy, lambda: 0.5), 1.5)
        # A backoff already longer than what the upstream asked for stays.
        self.assertEqual(retry_wait(SETTINGS, 4, busy, lambda: 0.5), 3.2)
        self.assertEqual(retry_wait(SETTINGS, 0, UpstreamRefusedAttempt(429, 1.0),
                                    lambda: 0.5), 1.0)

    def test_a_long_retry_after_or_a_silent_429_moves_on(self) -> None:
        self.assertIsNone(retry_wait(SETTINGS, 0, UpstreamRefusedAttempt(503, 7.0)))
        self.assertIsNone(retry_wait(SETTINGS, 0, UpstreamRefusedAttempt(429, None)))
        # A 5xx that says nothing is retried after the backoff.
        self.assertEqual(retry_wait(SETTINGS, 0, UpstreamRefusedAttempt(500, None),
                                    lambda: 0.5), 0.2)


class RetryAfterTests(GatewayTestCase):
    config = CONFIG.replace("models:\n", """routing:
  retries: 1
  retry_backoff: 0.01
  max_retry_after: 1
models:
""", 1)

    def create(self, model: str) -> object:
        return self.sdk(self.client.with_options(max_retries=0).chat.completions
                        .with_raw_response.create, model=model,
                        messages=[{"role": "user", "content": "hi"}])

    async def test_a_retry_waits_for_the_upstreams_retry_after(self) -> None:
        started = reactor.seconds()
        raw = await self.create("busy-once")
        self.assertGreaterEqual(reactor.seconds() - started, 1.0)
        self.assertEqual(raw.http_response.status_code, 200)
        self.assertEqual([body["model"] for _, _, body in self.fake.requests],
                         ["busy-once", "busy-once"])
        [record] = self.access_records()
        self.assertEqual((record["status"], record["attempts"]), (200, 2))

    async def test_a_lone_targets_long_retry_after_is_the_callers_at_once(self) -> None:
        """Nowhere else to go and too long to wait: the 429 is answered, not dropped."""
        started = reactor.seconds()
        with self.assertRaises(openai.RateLimitError) as caught:
            await self.create("error-429")
        self.assertLess(reactor.seconds() - started, 1.0)
        self.assertEqual(caught.exception.response.headers["retry-after"], "7")
        self.assertEqual(len(self.fake.requests), 1)
        [record] = self.access_records()
        self.assertEqual(record["status"], 429)

    async def test_the_responses_api_gives_the_upstreams_retry_after_too(self) -> None:
        """The same for ``/v1/responses``, now on the runner (its own loop dropped it)."""
        with self.assertRaises(openai.RateLimitError) as caught:
            await self.sdk(self.client.with_options(max_retries=0).responses.create,
                           model="error-429", input="hi")
        self.assertEqual(caught.exception.response.headers["retry-after"], "7")
        [record] = self.access_records()
        self.assertEqual(record["status"], 429)

    async def test_a_passthrough_call_is_retried_the_same_way(self) -> None:
        """Its one target is attempted as a route's are: the Retry-After waited for."""
        started = reactor.seconds()
        response = await treq.post(
            self.base_url + "/p/fake/chat/completions",
            orjson.dumps({"model": "busy-once", "messages": [{"role": "user", "content": "hi"}]}),
            headers={b"content-type": [b"application/json"]}, pool=self.pool)
        self.assertEqual(response.code, 200)
        await treq.content(response)
        self.assertGreaterEqual(reactor.seconds() - started, 1.0)
        self.assertEqual(len(self.fake.requests), 2)
        [record] = self.access_records()
        self.assertEqual((record["route"], record["status"], record["attempts"],
                          record["model"]), ("passthrough", 200, 2, "busy-once"))
