"""
Live sessions (``/v1/live/sessions``): the caller names its model in ``session.start``, after
the upgrade, while the gateway routes at the upgrade (``?model=``, else
``realtime.live_model``).  The ``session.start`` (a Live session's first event) sent upstream
names the model routed, so a caller cannot reach another model than its key was admitted for.
"""

from __future__ import annotations

import orjson

from txgateway.dialects.openai import loads_object


def started_with(payload: bytes, model: str) -> bytes | None:
    """The frame as a ``session.start`` naming ``model``; None when it is no ``session.start``."""
    event = loads_object(payload)
    if event is None or event.get("type") != "session.start":
        return None
    session = event.get("session")
    session = session if isinstance(session, dict) else {}
    if session.get("model") == model:
        return payload
    return orjson.dumps({**event, "session": {**session, "model": model}})
