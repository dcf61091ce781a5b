"""
Reading a realtime upgrade request: the caller's key, the model, the intent, the interface
(GA or beta) and the subprotocol to select.

Browsers cannot set headers on a WebSocket, so their key rides in the subprotocol list as
``openai-insecure-api-key.<key>``; the handshake selects exactly ``realtime`` and never names
that entry back (protocols.md §1.3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

KEY_PROTOCOL = "openai-insecure-api-key."
BETA_PROTOCOL = "openai-beta.realtime-v1"
SELECTED = "realtime"


@attrs.frozen
class Upgrade:
    """What the gateway routes a realtime upgrade on."""

    model: str | None
    intent: str
    beta: bool
    key: str | None = attrs.field(repr=False)
    #: The subprotocol to answer with: ``realtime`` when offered, else none.
    protocol: str | None


def read_upgrade(headers: Mapping[str, str], params: Mapping[str, Sequence[str]],
                 protocols: Sequence[str]) -> Upgrade:
    """``headers`` lower-cased as Autobahn gives them; ``params`` the query's lists."""
    key = None
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        key = authorization[7:].strip() or None
    for offered in protocols:
        if offered.startswith(KEY_PROTOCOL) and key is None:
            key = offered[len(KEY_PROTOCOL):] or None
    beta = (BETA_PROTOCOL in protocols
            or "realtime=v1" in headers.get("openai-beta", "").replace(" ", "").split(","))
    return Upgrade(
        model=_first(params, "model"),
        intent=_first(params, "intent") or "realtime",
        beta=beta,
        key=key,
        protocol=SELECTED if SELECTED in protocols else None,
    )


def _first(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    return values[0] if values else None
