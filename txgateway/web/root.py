"""The resource tree: every endpoint on one port."""

from __future__ import annotations

from twisted.web.resource import Resource

from txgateway.gateway import Gateway
from txgateway.realtime.server import realtime_resource
from txgateway.web.admin import Admin
from txgateway.web.chat import ChatCompletions
from txgateway.web.health import Health, Metrics, Ready
from txgateway.web.messages import messages_tree
from txgateway.web.models import Models
from txgateway.web.resource import JSONResource


def build_root(gateway: Gateway) -> Resource:
    root = JSONResource()
    v1 = JSONResource()
    chat = JSONResource()
    root.putChild(b"v1", v1)
    v1.putChild(b"chat", chat)
    chat.putChild(b"completions", ChatCompletions(gateway))
    v1.putChild(b"models", Models(gateway, int(gateway.reactor.seconds())))
    # The Messages API, also under /anthropic for clients whose base URL must differ.
    messages = messages_tree(gateway)
    v1.putChild(b"messages", messages)
    anthropic, anthropic_v1 = JSONResource(), JSONResource()
    root.putChild(b"anthropic", anthropic)
    anthropic.putChild(b"v1", anthropic_v1)
    anthropic_v1.putChild(b"messages", messages)
    v1.putChild(b"realtime", realtime_resource(gateway))
    root.putChild(b"admin", Admin(gateway))
    health = Health()
    health.putChild(b"ready", Ready(gateway))
    root.putChild(b"health", health)
    root.putChild(b"metrics", Metrics(gateway))
    return root
