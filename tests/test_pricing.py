"""Prices: finding a model's price by its variants' names, and costs computed by hand."""

from __future__ import annotations

import json
import time
from importlib.resources import files

import attrs
from twisted.trial.unittest import SynchronousTestCase

from txgateway.pricing import SHIPPED_PRICES, ModelPrice, PriceTable, shipped_table
from txgateway.usage import Usage

TABLE = shipped_table()


class LookupTests(SynchronousTestCase):
    def test_dated_names_cost_as_their_model(self) -> None:
        gpt_4o = ModelPrice(input=2.5, cached_input=1.25, output=10.0)
        self.assertEqual(TABLE.price("gpt-4o"), gpt_4o)
        self.assertEqual(TABLE.price("gpt-4o-2024-08-06"), gpt_4o)
        self.assertEqual(TABLE.price("claude-sonnet-4-5-20250929").cache_write, 3.75)
        self.assertEqual(TABLE.price("claude-3-5-sonnet-latest").input, 3.0)
        self.assertEqual(TABLE.price("gemini-2.5-pro-preview-05-06").output, 10.0)

    def test_a_made_up_name_is_looked_up_in_bounded_time(self) -> None:
        """
        A caller's model name may be as long as a body: the prefixes tried stop at the
        longest listed name (all of them took 22 s for 300 kB of dashes, the reactor
        stalled), and a name that long is not cached.
        """
        table = shipped_table()
        for name, price in (("-" * 300_000, None), ("gpt-4o-" + "-" * 300_000, 2.5)):
            started = time.process_time()
            found = table.price(name)
            self.assertLess(time.process_time() - started, 0.5)
            self.assertEqual(found and found.input, price)
        self.assertEqual(table._found, {})
        self.assertEqual(table.price("gpt-4o-2024-08-06").input, 2.5)

    def test_the_longest_listed_name_wins(self) -> None:
        self.assertEqual(TABLE.price("gpt-4o-mini").input, 0.15)
        self.assertEqual(TABLE.price("gpt-4o-mini-2024-07-18").input, 0.15)
        self.assertEqual(TABLE.price("gpt-4o-mini-realtime-preview-2024-12-17").audio_input, 10)
        self.assertEqual(TABLE.price("claude-opus-4-1-20250805").input, 15.0)
        self.assertEqual(TABLE.price("claude-opus-4-5-20251101").input, 5.0)
        # A dated name listed apart keeps its own price.
        self.assertEqual(TABLE.price("gpt-4o-realtime-preview-2024-10-01").audio_input, 100)
        self.assertEqual(TABLE.price("gpt-4o-realtime-preview-2024-12-17").audio_input, 40)

    def test_cuts_only_at_a_boundary(self) -> None:
        self.assertIsNone(TABLE.price("gpt-4omni"))
        self.assertIsNone(TABLE.price("o3x"))
        self.assertIsNone(TABLE.price("llama-3.3-70b"))
        self.assertIsNone(TABLE.price(""))

    def test_vertex_and_bedrock_names(self) -> None:
        self.assertEqual(TABLE.price("claude-sonnet-4@20250514").output, 15.0)
        self.assertEqual(TABLE.price("anthropic.claude-3-haiku-20240307-v1:0").input, 0.25)
        self.assertEqual(TABLE.price("us.anthropic.claude-3-5-sonnet-20241022-v2:0").input, 3.0)
        self.assertEqual(TABLE.price("global.anthropic.claude-haiku-4-5-20251001-v1:0").input,
                         1.0)
        self.assertEqual(TABLE.price("amazon.nova-pro-v1:0").output, 3.2)
        self.assertEqual(TABLE.price("cohere.command-r-plus-v1:0").input, 3.0)

    def test_globs_come_last_and_the_longest_wins(self) -> None:
        exact, fine_tuned, any_fine_tuned = (ModelPrice(input=n) for n in (1.0, 2.0, 3.0))
        table = PriceTable({"gpt-4o": exact, "ft:gpt-4o*": fine_tuned, "ft:*": any_fine_tuned})
        self.assertIs(table.price("ft:gpt-4o-mini:acme::abc123"), fine_tuned)
        self.assertIs(table.price("ft:davinci-002:acme::x"), any_fine_tuned)
        self.assertIs(table.price("gpt-4o-2024-11-20"), exact)
        self.assertIsNone(table.price("gpt-5"))

    def test_the_main_models_are_shipped(self) -> None:
        for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano",
                      "gpt-5-2025-08-07", "gpt-5-mini", "gpt-5-nano", "o1", "o3", "o3-mini",
                      "o4-mini", "gpt-realtime", "gpt-realtime-mini", "gpt-4o-realtime-preview",
                      "gpt-4o-mini-realtime-preview", "gpt-4o-transcribe", "whisper-1",
                      "text-embedding-3-small", "text-embedding-3-large", "dall-e-3",
                      "gpt-image-1", "claude-opus-4-1", "claude-sonnet-4-5", "claude-haiku-4-5",
                      "claude-3-7-sonnet-20250219", "claude-3-5-haiku-20241022",
                      "claude-3-haiku-20240307", "gemini-2.0-flash-001", "gemini-2.5-flash",
                      "gemini-2.5-pro", "command-r-08-2024", "command-r-plus", "rerank-v3.5",
                      "mistral-large-latest", "mistral-small-2506", "codestral-2501",
                      "anthropic.claude-sonnet-4-20250514-v1:0"):
            price = TABLE.price(model)
            self.assertIsNotNone(price, model)
            self.assertTrue(any(attrs.astuple(price)), model)

    def test_the_file_says_where_its_prices_come_from(self) -> None:
        document = json.loads(files("txgateway").joinpath("prices.json").read_text("utf-8"))
        self.assertIn("LiteLLM", document["source"])
        self.assertRegex(document["date"], r"^\d{4}-\d{2}-\d{2}$")
        self.assertEqual(set(document["prices"]), set(SHIPPED_PRICES))


class CostTests(SynchronousTestCase):
    def test_openai_cache_reads(self) -> None:
        usage = Usage(input_tokens=10_000, cached_input_tokens=4_000, output_tokens=1_000)
        # 6000 x 2.50 + 4000 x 1.25 + 1000 x 10.00, per million
        self.assertAlmostEqual(TABLE.cost("gpt-4o-2024-08-06", usage), 0.03, places=12)

    def test_anthropic_cache_reads_and_writes(self) -> None:
        usage = Usage(input_tokens=1_300_000, cached_input_tokens=200_000,
                      cache_creation_tokens=100_000, output_tokens=50_000, reasoning_tokens=10)
        # 1M x 3 + 0.2M x 0.30 + 0.1M x 3.75 + 0.05M x 15; reasoning is part of the output
        self.assertAlmostEqual(TABLE.cost("claude-sonnet-4-5", usage), 4.185, places=12)

    def test_audio_tokens_at_audio_prices(self) -> None:
        usage = Usage.from_openai({
            "prompt_tokens": 1000, "completion_tokens": 2000,
            "prompt_tokens_details": {"audio_tokens": 600, "cached_tokens": 0},
            "completion_tokens_details": {"audio_tokens": 1500, "reasoning_tokens": 0},
        })
        self.assertEqual((usage.input_audio_tokens, usage.output_audio_tokens), (600, 1500))
        # 400 x 2.50 + 600 x 40 + 500 x 10 + 1500 x 80, per million
        self.assertAlmostEqual(TABLE.cost("gpt-4o-audio-preview", usage), 0.15, places=12)

    def test_kinds_not_priced_apart_cost_the_plain_price(self) -> None:
        table = PriceTable({"plain": ModelPrice(input=1.0, output=2.0)})
        usage = Usage(input_tokens=4_000_000, cached_input_tokens=1_000_000,
                      cache_creation_tokens=1_000_000, input_audio_tokens=1_000_000,
                      output_tokens=2_000_000, output_audio_tokens=1_000_000)
        self.assertAlmostEqual(table.cost("plain", usage), 4 * 1.0 + 2 * 2.0, places=12)

    def test_images_seconds_and_searches(self) -> None:
        self.assertAlmostEqual(TABLE.cost("dall-e-3", Usage(images=2)), 0.08, places=12)
        self.assertAlmostEqual(TABLE.cost("gpt-image-1", Usage(images=1)), 0.042, places=12)
        # gpt-image-1 reports tokens: they are what is billed, not the image.
        with_tokens = Usage(input_tokens=1000, output_tokens=4000, images=1)
        self.assertAlmostEqual(TABLE.cost("gpt-image-1", with_tokens), 0.165, places=12)
        self.assertAlmostEqual(TABLE.cost("whisper-1", Usage(audio_seconds=60.0)), 0.006,
                               places=12)
        self.assertAlmostEqual(TABLE.cost("rerank-v3.5", Usage(search_units=3)), 0.006,
                               places=12)
        self.assertAlmostEqual(TABLE.cost("text-embedding-3-small",
                                          Usage(input_tokens=500_000)), 0.01, places=12)

    def test_unknown_models_have_no_cost(self) -> None:
        self.assertIsNone(TABLE.cost("my-local-llama", Usage(input_tokens=10)))
        self.assertIsNone(TABLE.realtime_cost("my-local-llama", 1, 1, 1, 0, 0, 1, 1))
        self.assertIsNone(TABLE.transcription_cost("my-local-asr", 1, 1.0))

    def test_realtime_by_modality(self) -> None:
        cost = TABLE.realtime_cost("gpt-realtime-2025-08-28", input_text=1000,
                                   input_audio=10_000, input_image=500, cached_text=400,
                                   cached_audio=2000, output_text=300, output_audio=5000)
        # 600 x 4 + 400 x 0.40 + 8000 x 32 + 2000 x 0.40 + 500 x 5 + 300 x 16 + 5000 x 64
        self.assertAlmostEqual(cost, 0.58666, places=12)
        self.assertAlmostEqual(
            TABLE.realtime_cost("gpt-4o-realtime-preview-2024-10-01", 0, 1000, 0, 0, 0, 0, 1000),
            0.3, places=12)
        self.assertAlmostEqual(
            TABLE.realtime_cost("gpt-4o-realtime-preview-2024-12-17", 0, 1000, 0, 0, 0, 0, 1000),
            0.12, places=12)
        # Cached audio without a price of its own costs the cached text price.
        table = PriceTable({"rt": ModelPrice(input=1.0, cached_input=0.5, audio_input=8.0)})
        self.assertAlmostEqual(table.realtime_cost("rt", 0, 1_000_000, 0, 0, 1_000_000, 0, 0),
                               0.5, places=12)

    def test_transcription(self) -> None:
        # 1000 audio tokens x 6 + 200 text tokens x 10, per million; seconds do not count
        self.assertAlmostEqual(TABLE.transcription_cost("gpt-4o-transcribe", 1000, 12.0, 200),
                               0.008, places=12)
        self.assertAlmostEqual(TABLE.transcription_cost("whisper-1", 0, 90.0), 0.009, places=12)
        self.assertEqual(TABLE.transcription_cost("whisper-1", 100, 0.0), 0.0)


class OverrideTests(SynchronousTestCase):
    def test_the_config_replaces_and_adds(self) -> None:
        table = shipped_table({"gpt-4o": ModelPrice(input=1.0, output=2.0),
                               "house-model": ModelPrice(input=0.5, output=0.5)})
        self.assertEqual(table.price("gpt-4o-2024-08-06"), ModelPrice(input=1.0, output=2.0))
        # Replaced whole: no cached price left, so cache reads cost the input price.
        usage = Usage(input_tokens=1_000_000, cached_input_tokens=1_000_000)
        self.assertAlmostEqual(table.cost("gpt-4o", usage), 1.0, places=12)
        self.assertEqual(table.price("house-model-v2").input, 0.5)
        self.assertEqual(table.price("gpt-4.1").input, 2.0)
        self.assertEqual(TABLE.price("gpt-4o").input, 2.5)
