"""The pieces workers and their parent exchange: long values over AMP, summed metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from twisted.protocols import amp
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from txgateway.cluster import BigBytes, merged_sessions, summed_metrics
from txgateway.metrics import GatewayMetrics


class Echo(amp.Command):
    arguments = [(b"value", BigBytes())]
    response = [(b"value", BigBytes())]


class Echoing(amp.AMP):
    @Echo.responder
    def echo(self, value: bytes) -> dict[str, bytes]:
        return {"value": value}


class BigBytesTests(SynchronousTestCase):
    def test_values_past_amps_limit_go_both_ways(self) -> None:
        client, _, pump = connectedServerAndClient(Echoing, amp.AMP)
        for value in (b"", b"x", bytes(range(256)) * 1000):  # 256 kB: four AMP values
            answers: list[dict[str, bytes]] = []
            client.callRemote(Echo, value=value).addCallback(answers.append)
            pump.flush()
            self.assertEqual(answers, [{"value": value}])


def scrape(metrics: GatewayMetrics) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry)


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text.decode())
            for sample in family.samples}


class SummedMetricsTests(SynchronousTestCase):
    def test_counters_histograms_and_gauges_add_up(self) -> None:
        one, two = GatewayMetrics(), GatewayMetrics()
        one.request("chat", "m", "p", "200", 0.02, 0.01)
        two.request("chat", "m", "p", "200", 3.0, None)
        two.request("chat", "m", "p", "500", 0.1, None)
        one.realtime_session("m", "p", 1)
        two.realtime_session("m", "p", 1)
        one.ledger_pending(3)
        alone = samples(scrape(one))
        summed = samples(summed_metrics([scrape(one), scrape(two)]))
        chat = (("model", "m"), ("provider", "p"), ("route", "chat"))
        self.assertEqual(summed[("txgateway_requests_total", (*chat, ("status", "200")))], 2)
        self.assertEqual(summed[("txgateway_requests_total", (*chat, ("status", "500")))], 1)
        self.assertEqual(summed[("txgateway_realtime_sessions_active",
                                 (("model", "m"), ("provider", "p")))], 2)
        self.assertEqual(summed[("txgateway_ledger_pending_records", ())], 3)
        # Histogram buckets are cumulative in each exposition, so their sums stay cumulative.
        buckets = sorted((float(dict(labels)["le"]), value) for (name, labels), value
                         in summed.items() if name == "txgateway_time_to_first_token_seconds"
                         "_bucket")
        self.assertEqual([value for _, value in buckets],
                         sorted(value for _, value in buckets))
        self.assertEqual(set(summed), set(alone) | set(samples(scrape(two))))

    def test_a_dead_workers_share_keeps_its_counters_alone(self) -> None:
        metrics = GatewayMetrics()
        metrics.request("chat", "m", "p", "200", 0.02, 0.01)
        metrics.realtime_session("m", "p", 1)
        metrics.ledger_pending(3)
        kept = samples(summed_metrics([scrape(metrics)], growing_only=True))
        whole = samples(scrape(metrics))
        chat = (("model", "m"), ("provider", "p"), ("route", "chat"), ("status", "200"))
        self.assertEqual(kept[("txgateway_requests_total", chat)], 1)
        self.assertIn("txgateway_time_to_first_token_seconds_bucket", {n for n, _ in kept})
        self.assertNotIn(("txgateway_realtime_sessions_active", (("model", "m"),
                                                                 ("provider", "p"))), kept)
        self.assertNotIn(("txgateway_ledger_pending_records", ()), kept)
        self.assertFalse([name for name, _ in kept if name.endswith("_created")])
        self.assertTrue(set(kept) < set(whole))

    def test_sessions_of_every_worker_in_one_list(self) -> None:
        merged = merged_sessions([
            {"active": [{"id": "b", "started_at": "2026-01-01T00:00:02Z"}],
             "recent": [{"id": "d", "ended_at": "2026-01-01T00:00:03Z"}]},
            {"active": [{"id": "a", "started_at": "2026-01-01T00:00:01Z"}],
             "recent": [{"id": "e", "ended_at": "2026-01-01T00:00:04Z"},
                        {"id": "c", "ended_at": "2026-01-01T00:00:00Z"}]},
        ])
        self.assertEqual([s["id"] for s in merged["active"]], ["a", "b"])
        self.assertEqual([s["id"] for s in merged["recent"]], ["e", "d", "c"])
