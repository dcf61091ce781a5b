"""
``POST /v1/images/generations`` (JSON) and ``/v1/images/edits`` (multipart, sent upstream as
it arrives: `txgateway.web.forms`): routed by model, answered as the upstream wrote it; the
images generated are counted into the usage (for per-image prices) with the tokens gpt-image
models report, streamed answers included (``image_generation.completed`` /
``image_edit.completed`` events carry the usage).
"""

from __future__ import annotations

from typing import Any

import orjson
from zope.interface import implementer

from txgateway.dialects.openai import error_body, stream_error_event
from txgateway.dialects.openai_rest import (
    RestRequest,
    image_usage,
    parse_image_generation,
    usage_of,
)
from txgateway.providers import OPENAI_WIRE, ApiCall, UpstreamRequest, speaks
from txgateway.routing import Target
from txgateway.usage import Usage
from txgateway.web.forms import FormEndpoint
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.relay import ITranscoder
from txgateway.web.resource import JSONResource
from txgateway.web.rest import UsageEvents
from txgateway.web.runner import CallEndpoint, ICodec, refused_api

_COMPLETED = ("image_generation.completed", "image_edit.completed")


def read_image_usage(answer: Any, seen: Usage | None) -> Usage | None:
    """A whole answer's usage, or a stream's so far: one image per completed event."""
    if not isinstance(answer, dict):
        return None
    if "type" not in answer:
        return image_usage(answer)
    if answer["type"] not in _COMPLETED:
        return None
    usage = usage_of(answer.get("usage")) or Usage()
    if seen is None:
        return Usage(input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
                     cached_input_tokens=usage.cached_input_tokens, images=1)
    return Usage(input_tokens=seen.input_tokens + usage.input_tokens,
                 output_tokens=seen.output_tokens + usage.output_tokens,
                 cached_input_tokens=seen.cached_input_tokens + usage.cached_input_tokens,
                 images=seen.images + 1)


class ImageGenerations(CallEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation("Create images", "ImageRequest")})
    route = "images"
    api = "images"
    parse = staticmethod(parse_image_generation)
    error_body = staticmethod(error_body)
    error_event = staticmethod(stream_error_event)

    def codec(self, request: Any, images: RestRequest, target: Target) -> ICodec:
        provider = target.provider
        if self.api in provider.apis and speaks(provider, OPENAI_WIRE):
            return _SAME
        raise refused_api(self.api, images.model, target)


@implementer(ICodec)
class SameImages:
    """The identity codec of image generation (OpenAI-compatible servers only)."""

    stream_type = b"text/event-stream"

    def request(self, images: RestRequest, target: Target) -> UpstreamRequest:
        return target.provider.build_request(ApiCall(
            api="images", body=images.upstream_body(target.model), parsed=images.parsed,
            model=target.model, stream=images.stream))

    def answer(self, body: bytes) -> tuple[bytes, Usage | None]:
        return body, read_image_usage(orjson.loads(body), None)

    def error(self, status: int, body: bytes) -> bytes:
        return body

    def transcoder(self, images: RestRequest) -> ITranscoder:
        return UsageEvents(read_image_usage)


_SAME = SameImages()


class ImageEdits(FormEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation("Edit an image", "form")})
    route = "image_edits"
    api = "image_edits"
    # ``image`` or ``image[]`` (several images): the upstream checks which.
    required = ("model", "prompt")
    read_usage = staticmethod(read_image_usage)


def images_tree(gateway: Any) -> JSONResource:
    """``images`` with ``generations`` and ``edits``, to mount under a ``v1``."""
    images = JSONResource()
    images.putChild(b"generations", ImageGenerations(gateway))
    images.putChild(b"edits", ImageEdits(gateway))
    return images
