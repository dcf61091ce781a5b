"""The metrics' exposition: what Prometheus scrapes must read as prometheus_client writes it."""

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from txgateway.metrics import DURATION_BUCKETS, GatewayMetrics


def scrape(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


class ExpositionTests(SynchronousTestCase):
    def test_histogram_buckets_are_cumulative_and_inclusive(self) -> None:
        metrics = GatewayMetrics()
        # On a bound, below the first, between two, beyond the last.
        for duration in (0.01, 0.001, 0.3, 1000.0):
            metrics.request("chat", "m", "p", "200", duration, None)
        samples = scrape(metrics)
        labels = (("model", "m"), ("provider", "p"), ("route", "chat"))

        def bucket(le: str) -> float:
            return samples[("txgateway_request_duration_seconds_bucket",
                            tuple(sorted((*labels, ("le", le)))))]

        self.assertEqual(bucket("0.005"), 1)
        self.assertEqual(bucket("0.01"), 2)
        self.assertEqual(bucket("0.25"), 2)
        self.assertEqual(bucket("0.5"), 3)
        self.assertEqual(bucket(repr(float(DURATION_BUCKETS[-1]))), 3)
        self.assertEqual(bucket("+Inf"), 4)
        self.assertEqual(samples[("txgateway_request_duration_seconds_count", labels)], 4)
        self.assertAlmostEqual(samples[("txgateway_request_duration_seconds_sum", labels)],
                               1000.311)
        self.assertEqual(samples[("txgateway_requests_total",
                                  tuple(sorted((*labels, ("status", "200")))))], 4)

    def test_counters_and_gauges(self) -> None:
        metrics = GatewayMetrics()
        metrics.cost("chat", "p", "m", 0.25)
        metrics.cost("chat", "p", "m", 0.5)
        metrics.realtime_session("m", "p", 1)
        metrics.realtime_session("m", "p", 1)
        metrics.realtime_session("m", "p", -1)
        metrics.ledger_pending(7)
        samples = scrape(metrics)
        self.assertEqual(samples[("txgateway_gen_ai_client_cost_usd_total",
                                  (("model", "m"), ("provider", "p"), ("route", "chat")))], 0.75)
        self.assertEqual(samples[("txgateway_realtime_sessions_active",
                                  (("model", "m"), ("provider", "p")))], 1)
        self.assertEqual(samples[("txgateway_ledger_pending_records", ())], 7)


class SemanticConventionTests(SynchronousTestCase):
    """The gen_ai views: other names and labels over the same observations."""

    def test_operation_duration_and_time_to_first_token(self) -> None:
        metrics = GatewayMetrics()
        metrics.provider_kinds = {"east": "azure"}
        metrics.request("chat", "m", "east", "200", 0.3, 0.1)
        metrics.request("messages", "m", "east", "200", 0.2, None)
        metrics.request("chat", "m", "east", "502", 0.01, None)
        metrics.request("rerank", "r", "unknown", "200", 0.05, 0.05)
        samples = scrape(metrics)
        chat = (("gen_ai_operation_name", "chat"), ("gen_ai_provider_name", "azure.ai.openai"),
                ("gen_ai_request_model", "m"))
        # chat and messages are both the "chat" operation; a failure is apart by error_type.
        self.assertEqual(samples[("gen_ai_client_operation_duration_seconds_count",
                                  (("error_type", ""), *chat))], 2)
        self.assertAlmostEqual(samples[("gen_ai_client_operation_duration_seconds_sum",
                                        (("error_type", ""), *chat))], 0.5)
        self.assertEqual(samples[("gen_ai_client_operation_duration_seconds_count",
                                  (("error_type", "502"), *chat))], 1)
        self.assertEqual(samples[("gen_ai_server_time_to_first_token_seconds_count", chat)], 1)
        self.assertEqual(samples[("gen_ai_server_time_to_first_token_seconds_count", (
            ("gen_ai_operation_name", "rerank"), ("gen_ai_provider_name", "unknown"),
            ("gen_ai_request_model", "r")))], 1)
        # Today's family is unchanged: no status label, the statuses summed.
        self.assertEqual(samples[("txgateway_request_duration_seconds_count", (
            ("model", "m"), ("provider", "east"), ("route", "chat")))], 2)

    def test_token_usage_by_token_type(self) -> None:
        metrics = GatewayMetrics()
        metrics.tokens("chat", "bedrock", "m", "input", 10)
        metrics.tokens("messages", "bedrock", "m", "input", 5)
        metrics.tokens("chat", "bedrock", "m", "output", 7)
        samples = scrape(metrics)
        labels = (("gen_ai_operation_name", "chat"), ("gen_ai_provider_name", "aws.bedrock"),
                  ("gen_ai_request_model", "m"))
        self.assertEqual(samples[("gen_ai_client_token_usage_sum",
                                  (*labels, ("gen_ai_token_type", "input")))], 15)
        self.assertEqual(samples[("gen_ai_client_token_usage_count",
                                  (*labels, ("gen_ai_token_type", "input")))], 2)
        self.assertEqual(samples[("gen_ai_client_token_usage_bucket",
                                  (*labels, ("gen_ai_token_type", "output"), ("le", "16.0")))], 1)
        self.assertEqual(samples[("txgateway_gen_ai_client_token_usage_count", (
            ("gen_ai_operation_name", "messages"), ("gen_ai_provider_name", "bedrock"),
            ("gen_ai_request_model", "m"), ("gen_ai_token_type", "input")))], 1)
