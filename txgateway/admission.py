"""
Who may call, and where to: the one admission step of REST calls and realtime sessions.

In this order: the caller's key (401, missing or incorrect in the caller's dialect), a full
ledger buffer (new calls wait for room rather than lose their records), the key's limits (429),
the model the key may use (403), the route (404).  The limits come before the model checks so
that every answer to a limited key, refusals included, carries its ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from txgateway.auth import Principal
from txgateway.dialects.errors import OPENAI, ErrorDialect
from txgateway.limits import Limits
from txgateway.routing import Target


@attrs.frozen
class Caller:
    """What admission learned of the caller, whether it was let in or not."""

    key_id: str | None = None
    #: The key's limits when the limiter counted the call (it must hear what was used).
    limits: Limits | None = None
    #: The tokens the limiter took for the call.
    tokens: int = 0
    #: The response headers the limiter asks for (``x-ratelimit-*``, ``retry-after``).
    headers: Mapping[bytes, bytes] = MappingProxyType({})


UNKNOWN = Caller()


class Refusal(Exception):
    """The gateway itself answers the caller with an error: no key, no route, over a limit."""

    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, caller: Caller = UNKNOWN) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param
        self.caller = caller


@attrs.frozen
class Admitted:
    """A caller let in: who, and the targets to try in order (empty when not routed)."""

    principal: Principal
    caller: Caller
    plan: tuple[Target, ...]


async def admit(gateway: Any, principal: Principal | None, key_sent: bool, model: str,
                tokens: int, dialect: ErrorDialect, routed: bool = True) -> Admitted:
    """
    Admit ``principal`` (None when its key was refused) to call ``model``, counting one
    request and ``tokens`` against its limits; or raise a `Refusal`.  ``routed`` false
    (passthrough) skips the route.
    """
    if principal is None:
        raise Refusal(401, key_refused(key_sent, dialect), "invalid_api_key")
    caller = await limited(gateway, principal, tokens)
    # A key sent as the model (a pasting slip) is not said back: `said` is redacted.
    if not principal.may_use(model):
        raise Refusal(403, f"This key may not use the model `{said(gateway, model)}`.",
                      "model_not_allowed", "model", caller)
    plan = gateway.router.plan(model) if routed else []
    if plan and said(gateway, model) != model:
        # Not sent on even where a `*` route would take it: the answer and the ledger would
        # say the key back.
        plan = None
    if plan is None:
        raise Refusal(404, dialect.unknown_model(said(gateway, model)), "model_not_found",
                      "model", caller)
    return Admitted(principal, caller, tuple(plan))


def key_refused(key_sent: bool, dialect: ErrorDialect = OPENAI) -> str:
    """The 401's words: no key at all, or a key that is not known."""
    return dialect.incorrect_key if key_sent else dialect.missing_key


def said(gateway: Any, model: str) -> str:
    """A model name as a refusal or a log may say it: key-shaped strings redacted."""
    return gateway.redactor.text(model)


async def limited(gateway: Any, principal: Principal, tokens: int) -> Caller:
    """The limits step (after waiting for ledger room), alone for calls that name no model."""
    await gateway.ledger.room()
    if principal.limits is None:
        return Caller(principal.key_id)
    admission = await gateway.limiter.admit(principal.key_id, principal.limits, tokens)
    headers = {name.encode(): value.encode() for name, value in admission.headers.items()}
    if not admission.allowed:
        headers[b"retry-after"] = b"%d" % math.ceil(admission.retry_after)
        raise Refusal(429, admission.message, _LIMIT_CODES.get(admission.reason), None,
                      Caller(principal.key_id, headers=headers))
    return Caller(principal.key_id, principal.limits, tokens, headers)


#: Error codes of limiter refusals, by what was over its limit.
_LIMIT_CODES = {"requests": "rate_limit_exceeded", "tokens": "rate_limit_exceeded",
                "budget": "budget_exceeded"}
