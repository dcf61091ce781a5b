"""
``POST /v1/images/generations`` (JSON) and ``/v1/images/edits`` (multipart, sent upstream as
it arrives: `txgateway.web.forms`): routed by model, answered as the upstream wrote it; the
images generated are counted into the usage (for per-image prices) with the tokens gpt-image
models report, streamed answers included (``image_generation.completed`` /
``image_edit.completed`` events carry the usage).
"""

from __future__ import annotations

from typing import Any

from txgateway.accounting import Exchange
from txgateway.dialects.openai_rest import (
    RestRequest,
    image_usage,
    parse_image_generation,
    usage_of,
)
from txgateway.providers import ApiCall
from txgateway.routing import Target
from txgateway.upstream import UpstreamCall
from txgateway.usage import Usage
from txgateway.web.forms import FormEndpoint
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.proxy import is_event_stream
from txgateway.web.relay import start_event_stream
from txgateway.web.resource import JSONResource
from txgateway.web.rest import RestEndpoint, event_relay

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


class ImageGenerations(RestEndpoint):
    openapi = Endpoint("OpenAI", {"POST": Operation("Create images", "ImageRequest")})
    route = "images"
    api = "images"
    parse = staticmethod(parse_image_generation)

    async def proxy(self, request: Any, exchange: Exchange, images: RestRequest,
                    target: Target, call: UpstreamCall) -> None:
        if self.refused_api(request, exchange, call, target):
            return
        provider = target.provider
        response = await call.send(provider.agent, provider.build_request(ApiCall(
            api="images", body=images.upstream_body(target.model), parsed=images.parsed,
            model=target.model, stream=images.stream)))
        if images.stream and response.code == 200 and is_event_stream(response):
            start_event_stream(request)
            exchange.status = 200
            relay = event_relay(self._gateway, request, exchange, call, read_image_usage,
                                len(images.raw))
            call.deliver(response, relay)
            await relay.done
            return
        exchange.first_byte = self._gateway.reactor.seconds()
        body = await call.read(response)
        self.answer(request, exchange, response, call, body, read_image_usage)


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
