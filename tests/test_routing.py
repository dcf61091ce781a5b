"""Routes with several targets: weights, priorities, fallback, retries and cooldown."""

from __future__ import annotations

import random
from collections import Counter

import openai
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.gateway_harness import CONFIG, GatewayTestCase
from txgateway.config import ModelRoute, RouteTarget, RoutingSettings
from txgateway.routing import Router


class _Provider:
    def __init__(self, name: str) -> None:
        self.name = name
        self.kind = "openai"


PROVIDERS = {name: _Provider(name) for name in ("a", "b", "c")}


def _route(*targets: RouteTarget) -> ModelRoute:
    return ModelRoute(name="m", targets=targets)


class RouterTests(SynchronousTestCase):
    def test_weights_share_the_first_choice(self) -> None:
        random.seed(7)
        router = Router([_route(RouteTarget("a", weight=3), RouteTarget("b", weight=1))],
                        PROVIDERS)
        firsts = Counter(router.plan("m")[0].provider.name for _ in range(4000))
        self.assertLess(abs(firsts["a"] / 4000 - 0.75), 0.03)
        self.assertEqual({len(router.plan("m")) for _ in range(10)}, {2})

    def test_priorities_come_in_order(self) -> None:
        router = Router([_route(RouteTarget("c", priority=1), RouteTarget("a"),
                                RouteTarget("b", priority=2))], PROVIDERS)
        self.assertEqual([t.provider.name for t in router.plan("m")], ["a", "c", "b"])

    def test_a_failing_target_cools_down_then_is_probed(self) -> None:
        clock = Clock()
        settings = RoutingSettings(failures_before_cooldown=2, cooldown=30)
        router = Router([_route(RouteTarget("a", model="x"), RouteTarget("b", priority=1))],
                        PROVIDERS, settings, clock.seconds)
        first = router.plan("m")[0]
        router.failed(first)
        self.assertEqual(router.plan("m")[0].provider.name, "a")
        router.failed(first)
        self.assertTrue(router.cooling_down(first))
        self.assertEqual([t.provider.name for t in router.plan("m")], ["b", "a"])
        clock.advance(31)
        self.assertEqual(router.plan("m")[0].provider.name, "a")  # probed again
        router.failed(first)  # the probe failed: cool down at once
        self.assertEqual(router.plan("m")[0].provider.name, "b")
        clock.advance(31)
        router.succeeded(first)
        router.failed(first)
        self.assertEqual(router.plan("m")[0].provider.name, "a")

    def test_failing_made_up_models_are_remembered_boundedly(self) -> None:
        """Behind ``*`` each made-up name is a target of its own: the oldest is forgotten."""
        settings = RoutingSettings(failures_before_cooldown=1, cooldown=30)
        router = Router([ModelRoute(name="*", targets=(RouteTarget("a"),))], PROVIDERS,
                        settings, Clock().seconds)
        self.patch(router, "max_tracked", 2)
        targets = [router.plan(f"made-up-{number}")[0] for number in range(3)]
        for target in targets:
            router.failed(target)
        self.assertEqual([router.cooling_down(target) for target in targets],
                         [False, True, True])
        router.failed(targets[2])  # known: nothing else is forgotten
        self.assertTrue(router.cooling_down(targets[1]))

    def test_the_caller_model_goes_upstream_when_a_target_names_none(self) -> None:
        router = Router([ModelRoute(name="gpt-*", targets=(RouteTarget("a"),
                                                           RouteTarget("b", model="y")))],
                        PROVIDERS, shuffle=lambda members, weights: members)
        self.assertEqual([t.model for t in router.plan("gpt-4o")], ["gpt-4o", "y"])
        self.assertIsNone(router.plan("claude"))


FALLBACK_CONFIG = CONFIG.replace("models:\n", """routing:
  retries: 1
  retry_backoff: 0.01
  failures_before_cooldown: 2
  cooldown: 60
models:
  - name: falls-back
    targets:
      - provider: nowhere
        model: gpt-ok
      - provider: fake
        model: error-503
        priority: 1
      - provider: fake
        model: gpt-ok
        priority: 2
  - name: rate-limited
    targets:
      - provider: fake
        model: error-429
      - provider: fake
        model: gpt-ok
        priority: 1
  - name: all-fail
    targets:
      - provider: fake
        model: error-500
      - provider: fake
        model: error-503
        priority: 1
  - name: client-error
    targets:
      - provider: fake
        model: error-400
      - provider: fake
        model: gpt-ok
        priority: 1
""", 1)


class FallbackTests(GatewayTestCase):
    config = FALLBACK_CONFIG

    def create(self, model: str) -> object:
        return self.sdk(self.client.chat.completions.with_raw_response.create, model=model,
                        messages=[{"role": "user", "content": "hi"}])

    def upstream_models(self) -> list[str]:
        return [body["model"] for _, _, body in self.fake.requests]

    async def test_connect_errors_and_5xx_fall_back_with_retries(self) -> None:
        raw = await self.create("falls-back")
        self.assertEqual(raw.parse().choices[0].message.content, "Hello there!")
        self.assertEqual(raw.headers["x-txgateway-provider"], "fake")
        # The unreachable target twice (a retry), the 503 twice, then the good one.
        self.assertEqual(self.upstream_models(), ["error-503", "error-503", "gpt-ok"])
        [record] = self.access_records()
        self.assertEqual((record["provider"], record["upstream_model"], record["attempts"]),
                         ("fake", "gpt-ok", 5))
        samples = await self.metrics()
        self.assertEqual(samples[("txgateway_upstream_fallbacks_total", (
            ("provider", "nowhere"), ("reason", "upstream_unreachable")))], 2)
        # Two failures in a row (a call and its retry) cool a target down: the next call
        # tries the healthy one first.
        await self.create("falls-back")
        self.assertEqual(self.upstream_models()[3:], ["gpt-ok"])
        samples = await self.metrics()
        self.assertEqual(samples[("txgateway_upstream_fallbacks_total", (
            ("provider", "nowhere"), ("reason", "upstream_unreachable")))], 2)

    async def test_a_429_moves_on_without_retrying_the_same_target(self) -> None:
        raw = await self.create("rate-limited")
        self.assertEqual(raw.http_response.status_code, 200)
        self.assertEqual(self.upstream_models(), ["error-429", "gpt-ok"])

    async def test_when_every_target_fails_the_last_answer_is_the_callers(self) -> None:
        with self.assertRaises(openai.InternalServerError) as caught:
            await self.create("all-fail")
        self.assertEqual(caught.exception.status_code, 503)
        self.assertEqual(self.upstream_models(), ["error-500"] * 2 + ["error-503"] * 2)

    async def test_a_client_error_does_not_fall_back(self) -> None:
        with self.assertRaises(openai.BadRequestError):
            await self.create("client-error")
        self.assertEqual(self.upstream_models(), ["error-400"])

    async def test_streams_fall_back_before_their_first_byte(self) -> None:
        stream = await self.sdk(self.client.chat.completions.create, model="rate-limited",
                                messages=[{"role": "user", "content": "hi"}], stream=True)
        text = await self.sdk(lambda: "".join(chunk.choices[0].delta.content or ""
                                              for chunk in stream if chunk.choices))
        self.assertEqual(text, "Hello there!")
