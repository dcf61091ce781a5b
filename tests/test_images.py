"""End to end: ``/v1/images/generations`` and ``/v1/images/edits`` through the gateway."""

from __future__ import annotations

import hashlib

import orjson

from tests.fake_openai_rest import IMAGE_USAGE
from tests.gateway_harness import GatewayTestCase
from txgateway.usage import Usage
from txgateway.web.images import read_image_usage


class ImagesTests(GatewayTestCase):
    async def test_generation_counts_images_and_tokens(self) -> None:
        answer = await self.sdk(self.client.images.generate, model="gpt-image-1",
                                prompt="a red fox", n=2)
        self.assertEqual(len(answer.data), 2)
        self.assertEqual(answer.usage.output_tokens, IMAGE_USAGE["output_tokens"])
        path, _, body = self.fake.requests[0]
        self.assertEqual(path, b"/v1/images/generations")
        self.assertEqual(body, {"model": "gpt-image-1", "prompt": "a red fox", "n": 2})
        [record] = self.access_records()
        self.assertEqual((record["route"], record["images"], record["input_tokens"],
                          record["output_tokens"]), ("images", 2, 50, 4160))
        await self.ledger_written()
        [row] = await self.service.gateway.store.usage_report("model")
        self.assertEqual((row["model"], row["images"], row["output_tokens"]),
                         ("gpt-image-1", 2, 4160))

    async def test_generation_without_token_usage(self) -> None:
        """dall-e reports no usage: the images are counted all the same."""
        await self.sdk(self.client.images.generate, model="renamed", prompt="a fox")
        self.assertEqual(self.fake.requests[0][2]["model"], "upstream-name")
        [record] = self.access_records()
        self.assertEqual((record["images"], record["input_tokens"]), (1, 0))

    async def test_generation_stream(self) -> None:
        stream = await self.sdk(self.client.images.generate, model="gpt-image-1",
                                prompt="a fox", stream=True, partial_images=1)
        events = await self.sdk(list, stream)
        self.assertEqual([event.type for event in events],
                         ["image_generation.partial_image", "image_generation.completed"])
        [record] = self.access_records()
        self.assertEqual((record["images"], record["output_tokens"], record["stream"]),
                         (1, 4160, True))

    async def test_edit_multipart(self) -> None:
        image = bytes(range(256)) * 100
        answer = await self.sdk(self.client.images.edit, model="renamed", prompt="add a hat",
                                image=("fox.png", image, "image/png"))
        self.assertEqual(answer.data[0].b64_json, "ZWRpdA==")
        path, fields, files = self.fake.forms[0]
        self.assertEqual(path, b"/v1/images/edits")
        self.assertEqual(fields["model"], "upstream-name")
        self.assertEqual(files["image"][2], hashlib.sha256(image).hexdigest())
        [record] = self.access_records()
        self.assertEqual((record["route"], record["images"]), ("image_edits", 1))

    async def test_bad_requests(self) -> None:
        for body, param in [(b"nope", None), (orjson.dumps({"prompt": "x"}), "model"),
                            (orjson.dumps({"model": "gpt-image-1"}), "prompt"),
                            (orjson.dumps({"model": "m", "prompt": "x", "n": "2"}), "n")]:
            response = await self.post("/v1/images/generations", body)
            self.assertEqual(response.code, 400, body)
            self.assertEqual((await response.json())["error"]["param"], param)
        response = await self.post("/v1/images/edits", orjson.dumps({"model": "m"}))
        self.assertEqual(response.code, 400)
        self.assertIn("multipart", (await response.json())["error"]["message"])
        response = await self.post("/v1/images/generations", orjson.dumps(
            {"model": "demo", "prompt": "x"}))
        self.assertEqual((response.code, (await response.json())["error"]["code"]),
                         (400, "unsupported_api"))

    def test_stream_usage_sums_completed_images(self) -> None:
        seen = None
        for event in ({"type": "image_generation.partial_image"},
                      {"type": "image_generation.completed", "usage": IMAGE_USAGE},
                      {"type": "image_generation.completed", "usage": IMAGE_USAGE}):
            seen = read_image_usage(event, seen) or seen
        self.assertEqual(seen, Usage(input_tokens=100, output_tokens=8320, images=2))
