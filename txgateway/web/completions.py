"""
``POST /v1/completions``: OpenAI's legacy completions API, proxied as chat is (it is the chat
endpoint's code, asking the provider for its ``completions`` API): the caller's body goes
upstream as it came, streams are relayed as they arrive with usage always asked for and
dropped when the caller did not ask for it.
"""

from __future__ import annotations

from typing import Any

from txgateway.accounting import Exchange
from txgateway.dialects.openai import ChatRequest, parse_completion
from txgateway.routing import Target
from txgateway.upstream import UpstreamCall
from txgateway.web.chat import ChatCompletions
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.rest import refused_api


class Completions(ChatCompletions):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Create a (legacy) completion", "CompletionRequest")})
    route = "completions"
    api = "completions"
    parse = staticmethod(parse_completion)

    async def proxy(self, request: Any, exchange: Exchange, completion: ChatRequest,
                    target: Target, call: UpstreamCall) -> None:
        # No translating provider speaks the legacy API: OpenAI-compatible servers only.
        if not refused_api(self.api, request, exchange, call, target):
            await super().proxy(request, exchange, completion, target, call)
