"""
``POST /v1/completions``: OpenAI's legacy completions API, proxied as chat is (it is the chat
endpoint's code, asking the provider for its ``completions`` API): the caller's body goes
upstream as it came, streams are relayed as they arrive with usage always asked for and
dropped when the caller did not ask for it.
"""

from __future__ import annotations

from typing import Any

from txgateway.dialects.openai import ChatRequest, parse_completion
from txgateway.routing import Target
from txgateway.web.chat import ChatCompletions
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.rest import served
from txgateway.web.runner import ICodec


class Completions(ChatCompletions):
    openapi = Endpoint("OpenAI", {"POST": Operation(
        "Create a (legacy) completion", "CompletionRequest")})
    route = "completions"
    api = "completions"
    parse = staticmethod(parse_completion)

    def codec(self, request: Any, parsed: ChatRequest, target: Target) -> ICodec:
        # No translating provider speaks the legacy API: OpenAI-compatible servers only.
        served(self.api, parsed.model, target)
        return self._same
