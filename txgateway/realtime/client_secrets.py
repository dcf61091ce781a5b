"""
Ephemeral keys (``ek_...``): short-lived secrets the gateway issues to a key holder for a
browser or phone to open a realtime session with, so that neither the holder's key nor the
provider's ever reaches the device.

The gateway issues them itself (no provider is asked) and keeps only their hash, in the store
under `KIND`, with the hash of the key they were issued under.  A session opened with one is
that key's session: its models, limits and budget, its ledger lines; revoking the key revokes
its secrets at once.  The session config given at issue is applied upstream as a
``session.update`` sent before any of the caller's events.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson

from txgateway.auth import Principal
from txgateway.realtime.handshake import Upgrade
from txgateway.store import hash_key

#: The store kind ephemeral keys are kept under, by the hash of their secret.
KIND = "realtime_client_secret"
PREFIX = "ek_"
#: OpenAI's bounds of ``expires_after.seconds``, and its default.
MIN_SECONDS, MAX_SECONDS, DEFAULT_SECONDS = 10, 7200, 600
SESSION_TYPES = ("realtime", "transcription", "translation")
#: What each session type's issuing call answers as its ``object``.
OBJECTS = {"realtime": "realtime.session", "transcription": "realtime.transcription_session",
           "translation": "realtime.translation_session"}


class SecretRefused(Exception):
    """A request to issue or use a secret is answered with this status and error code."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


def is_client_secret(key: str | None) -> bool:
    return key is not None and key.startswith(PREFIX)


@attrs.frozen
class ClientSecret:
    """An issued secret as stored: never the secret itself."""

    hash: str
    #: The hash of the key it was issued under (None on an open gateway), and that key's id.
    key_hash: str | None
    key_id: str | None
    created_at: float
    expires_at: float
    #: The session config given at issue, ``type`` always set; ``model`` a gateway model name.
    session: Mapping[str, Any] = attrs.field(converter=dict)
    #: Issued by the beta ``POST /v1/realtime/transcription_sessions``: for beta sessions only.
    beta: bool = False

    @property
    def intent(self) -> str:
        return str(self.session["type"])

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def session_object(self) -> dict[str, Any]:
        """The session as the issuing call answers it (OpenAI's shape)."""
        return {"object": OBJECTS[self.intent], "id": "sess_" + self.hash[:24],
                "expires_at": int(self.expires_at), **self.session}

    def bind(self, upgrade: Upgrade, params: Mapping[str, Sequence[str]]) -> Upgrade:
        """The upgrade with the secret's model and intent where the caller named none."""
        if upgrade.beta and not self.beta:
            raise SecretRefused(400, "Client secrets are for the GA Realtime interface; drop "
                                "the beta header or subprotocol.", "beta_not_supported")
        if self.beta and not upgrade.beta:
            raise SecretRefused(400, "This client secret is for the beta Realtime interface "
                                "(OpenAI-Beta: realtime=v1).", "beta_required")
        model = self.session.get("model")
        if model is not None and upgrade.model not in (None, model):
            raise SecretRefused(400, f"This client secret was issued for the model `{model}`, "
                                f"not `{upgrade.model}`.", "client_secret_model_mismatch",
                                "model")
        intent = upgrade.intent if "intent" in params else self.intent
        return attrs.evolve(upgrade, model=upgrade.model or model, intent=intent)

    def session_update(self) -> bytes | None:
        """
        The ``session.update`` that applies the issued config upstream, or None when it holds
        nothing beyond its type and model (the model is the dialled URL's).
        """
        config = {name: value for name, value in self.session.items() if name != "model"}
        if len(config) <= 1:
            return None
        kind = "session.update"
        if self.beta:
            kind = "transcription_session.update"
        if self.beta or self.intent == "translation":
            # Neither takes the session's type: it is fixed by the URL.
            del config["type"]
        return orjson.dumps({"type": kind, "event_id": "event_gw_client_secret",
                             "session": config})


def parse_request(body: Mapping[str, Any], now: float) -> tuple[float, dict[str, Any]]:
    """
    The expiry time and session config of a ``POST /v1/realtime/client_secrets`` body;
    `SecretRefused` (400) when malformed.
    """
    expires = body.get("expires_after")
    seconds: Any = DEFAULT_SECONDS
    if expires is not None:
        if not isinstance(expires, dict):
            raise SecretRefused(400, "'expires_after' must be an object", "invalid_type",
                                "expires_after")
        if expires.get("anchor", "created_at") != "created_at":
            raise SecretRefused(400, "'expires_after.anchor' must be 'created_at'",
                                "invalid_value", "expires_after.anchor")
        seconds = expires.get("seconds", DEFAULT_SECONDS)
    if (not isinstance(seconds, int) or isinstance(seconds, bool)
            or not MIN_SECONDS <= seconds <= MAX_SECONDS):
        raise SecretRefused(400, f"'expires_after.seconds' must be an integer from "
                            f"{MIN_SECONDS} to {MAX_SECONDS}", "invalid_value",
                            "expires_after.seconds")
    session = body.get("session") or {"type": "realtime"}
    if not isinstance(session, dict):
        raise SecretRefused(400, "'session' must be an object", "invalid_type", "session")
    if session.get("type", "realtime") not in SESSION_TYPES:
        raise SecretRefused(400, "'session.type' must be one of " + ", ".join(
            f"'{kind}'" for kind in SESSION_TYPES), "invalid_value", "session.type")
    model = session.get("model")
    if model is not None and not isinstance(model, str):
        raise SecretRefused(400, "'session.model' must be a string", "invalid_type",
                            "session.model")
    return now + seconds, {"type": "realtime", **session}


def parse_beta_transcription(body: Mapping[str, Any],
                             now: float) -> tuple[float, dict[str, Any]]:
    """
    The expiry time and session config of a beta ``POST /v1/realtime/transcription_sessions``
    body: the config itself, its secret's expiry under ``client_secret.expires_at``.
    """
    config = dict(body)
    options = config.pop("client_secret", None) or {}
    if not isinstance(options, dict):
        raise SecretRefused(400, "'client_secret' must be an object", "invalid_type",
                            "client_secret")
    expires_at, _ = parse_request({"expires_after": options.get("expires_at")}, now)
    return expires_at, {**config, "type": "transcription"}


async def issue(store: Any, principal: Principal, key: str | None, expires_at: float,
                session: Mapping[str, Any], now: float,
                beta: bool = False) -> tuple[str, ClientSecret]:
    """A fresh secret, stored hashed under the key ``key`` belongs to; the secret returned."""
    value = PREFIX + secrets.token_urlsafe(30)
    secret = ClientSecret(hash=hash_key(value), key_hash=hash_key(key) if key else None,
                          key_id=principal.key_id, created_at=now, expires_at=expires_at,
                          session=session, beta=beta)
    await store.put_object(KIND, secret.hash, principal.key_id, secret.to_json(), now)
    return value, secret


async def redeem(store: Any, authenticator: Any, value: str,
                 now: float) -> tuple[Principal, ClientSecret]:
    """
    The key behind a secret and the secret; `SecretRefused` (401) when it is unknown, expired,
    or its key revoked or expired.  An expired secret is deleted.
    """
    held = await store.get_object(KIND, hash_key(value))
    if held is None:
        raise SecretRefused(401, "Incorrect API key provided.", "invalid_api_key")
    secret = ClientSecret(**held)
    if secret.expires_at <= now:
        await store.delete_object(KIND, secret.hash)
        raise SecretRefused(401, "The client secret has expired.", "client_secret_expired")
    principal = await authenticator.authenticate_hash(secret.key_hash)
    if principal is None:
        raise SecretRefused(401, "The key this client secret was issued under is revoked or "
                            "expired.", "client_secret_revoked")
    return principal, secret


async def caller(gateway: Any, key: str | None
                 ) -> tuple[Principal | None, ClientSecret | None]:
    """The caller behind a plain key or a secret, and the secret; `SecretRefused` for a bad one."""
    if not is_client_secret(key):
        return await gateway.authenticator.authenticate(key), None
    return await redeem(gateway.store, gateway.authenticator, key or "",
                        gateway.reactor.seconds())


async def caller_of(gateway: Any, upgrade: Upgrade, params: Mapping[str, Sequence[str]]
                    ) -> tuple[Principal | None, Upgrade, bytes | None]:
    """
    Who opens a realtime session, the upgrade as the session is routed on, and the
    ``session.update`` to send upstream first: a plain key's caller, or a secret's.
    """
    principal, secret = await caller(gateway, upgrade.key)
    if secret is None:
        return principal, upgrade, None
    return principal, secret.bind(upgrade, params), secret.session_update()
