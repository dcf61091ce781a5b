"""The resource tree: every endpoint on one port."""

from __future__ import annotations

from twisted.web.resource import Resource

from txgateway.gateway import Gateway
from txgateway.tracing import TracedRoot
from txgateway.web.admin import Admin
from txgateway.web.audio import audio_tree
from txgateway.web.batches import Batches
from txgateway.web.chat import ChatCompletions
from txgateway.web.completions import Completions
from txgateway.web.conversations import Conversations
from txgateway.web.dashboard import DocsPage
from txgateway.web.embeddings import Embeddings
from txgateway.web.files import Files
from txgateway.web.health import Health, Metrics, Ready
from txgateway.web.images import images_tree
from txgateway.web.messages import messages_tree
from txgateway.web.models import Models
from txgateway.web.openapi import OpenAPIDocument
from txgateway.web.passthrough import Passthrough
from txgateway.web.realtime_rest import live_tree, realtime_tree
from txgateway.web.rerank import Rerank
from txgateway.web.resource import JSONResource, Root
from txgateway.web.responses_input import responses_tree


def build_root(gateway: Gateway) -> Resource:
    limit = gateway.config.max_in_flight
    root = (Root(gateway.accountant, limit) if gateway.tracing is None
            else TracedRoot(gateway.accountant, gateway.tracing, limit))
    v1 = JSONResource()
    chat = JSONResource()
    root.putChild(b"v1", v1)
    v1.putChild(b"chat", chat)
    chat.putChild(b"completions", ChatCompletions(gateway))
    v1.putChild(b"completions", Completions(gateway))
    v1.putChild(b"embeddings", Embeddings(gateway))
    v1.putChild(b"responses", responses_tree(gateway))
    v1.putChild(b"conversations", Conversations(gateway))
    v1.putChild(b"images", images_tree(gateway))
    v1.putChild(b"audio", audio_tree(gateway))
    v1.putChild(b"files", Files(gateway))
    v1.putChild(b"batches", Batches(gateway))
    # Any call to a configured provider's own API, with the gateway's credentials.
    root.putChild(b"p", Passthrough(gateway))
    v1.putChild(b"models", Models(gateway, int(gateway.reactor.seconds())))
    # The Messages API, also under /anthropic for clients whose base URL must differ.
    messages = messages_tree(gateway)
    v1.putChild(b"messages", messages)
    anthropic, anthropic_v1 = JSONResource(), JSONResource()
    root.putChild(b"anthropic", anthropic)
    anthropic.putChild(b"v1", anthropic_v1)
    anthropic_v1.putChild(b"messages", messages)
    v1.putChild(b"realtime", realtime_tree(gateway))
    v1.putChild(b"live", live_tree(gateway))
    # Cohere's rerank, at Cohere's path, under /cohere for clients whose base URL must
    # differ, and at /v1/rerank where vLLM- and Jina-style clients call it.
    rerank, v2, cohere = Rerank(gateway), JSONResource(), JSONResource()
    root.putChild(b"v2", v2)
    v2.putChild(b"rerank", rerank)
    root.putChild(b"cohere", cohere)
    cohere.putChild(b"v2", v2)
    v1.putChild(b"rerank", rerank)
    root.putChild(b"admin", Admin(gateway))
    health = Health()
    health.putChild(b"ready", Ready(gateway))
    root.putChild(b"health", health)
    root.putChild(b"metrics", Metrics(gateway))
    root.putChild(b"openapi.json", OpenAPIDocument(root))
    root.putChild(b"docs", DocsPage())
    return root
