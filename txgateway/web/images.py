"""
``POST /v1/images/generations`` (JSON) and ``/v1/images/edits`` (multipart, sent upstream as
it arrives: `txgateway.web.forms`): routed by model, answered as the upstream wrote it; the
images generated are counted into the usage (for per-image prices) with the tokens gpt-image
models report, streamed answers included (``image_generation.completed`` /
``image_edit.completed`` events carry the usage).
"""

from __future__ import annotations

from typing import Any

from txgateway.dialects.openai_rest import image_usage, parse_image_generation, usage_of
from txgateway.usage import Usage
from txgateway.web.forms import FormCodec, FormEndpoint
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import JSONResource
from txgateway.web.rest import SameRest, served_by
from txgateway.web.runner import CallEndpoint

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
    parse = staticmethod(parse_image_generation)
    # OpenAI-compatible servers only: no codec translates image generation.
    codec = staticmethod(served_by(SameRest("images", read_image_usage)))


class ImageEdits(FormEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation("Edit an image", "form")})
    route = "image_edits"
    # ``image`` or ``image[]`` (several images): the upstream checks which.
    required = ("model", "prompt")
    codec = staticmethod(served_by(FormCodec("image_edits", read_image_usage)))


def images_tree(gateway: Any) -> JSONResource:
    """``images`` with ``generations`` and ``edits``, to mount under a ``v1``."""
    images = JSONResource()
    images.putChild(b"generations", ImageGenerations(gateway))
    images.putChild(b"edits", ImageEdits(gateway))
    return images
