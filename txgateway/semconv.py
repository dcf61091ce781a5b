"""
The OpenTelemetry gen_ai semantic conventions' names for what the gateway calls routes and
provider kinds, shared by the traces (`txgateway.tracing`) and the metrics.
"""

from __future__ import annotations

#: ``gen_ai.operation.name`` by route; a route not listed keeps its own name.
OPERATIONS = {
    "chat": "chat",
    "messages": "chat",
    "responses": "chat",
    "completions": "text_completion",
    "embeddings": "embeddings",
    "realtime": "realtime",
}

#: ``gen_ai.provider.name`` by provider kind (the plugin); a kind not listed keeps its name.
PROVIDERS = {
    "openai": "openai",
    "azure": "azure.ai.openai",
    "anthropic": "anthropic",
    "bedrock": "aws.bedrock",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "cohere": "cohere",
}


def operation(route: str) -> str:
    return OPERATIONS.get(route, route)


def provider(kind: str) -> str:
    return PROVIDERS.get(kind, kind)
