"""
How a server that speaks OpenAI's realtime protocol is dialled, for the providers that relay
to one (``openai``, ``azure``): the WebSocket URL, the intent, the beta interface.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from txgateway.providers import RealtimeTarget


def websocket_url(http_url: str) -> str:
    """http -> ws, https -> wss, as the openai SDK derives its realtime URL."""
    scheme, rest = http_url.split(":", 1)
    return ("wss" if scheme == "https" else "ws") + ":" + rest


#: The sessions served at a path of their own rather than as an ``intent`` of ``/realtime``.
SURFACES = {"translation": "/realtime/translations", "live": "/live/sessions"}


def openai_realtime_target(url: str, query: Mapping[str, str], intent: str, beta: bool,
                           headers: Mapping[str, str]) -> RealtimeTarget:
    """
    ``url`` with ``query`` and, for a session other than a plain realtime one, its intent;
    a beta caller's interface is asked for with ``OpenAI-Beta: realtime=v1``.
    """
    query = dict(query)
    if intent in SURFACES:
        url = url.removesuffix("/realtime") + SURFACES[intent]
    elif intent != "realtime":
        query["intent"] = intent
    headers = dict(headers)
    if beta:
        headers["OpenAI-Beta"] = "realtime=v1"
    return RealtimeTarget(url + "?" + urlencode(query), headers)
