"""
Who is calling: callers' gateway keys checked against the keys in the config and the store.

Keys are known only by their sha256 (`txgateway.store.hash_key`): the secret is never kept,
logged or counted.  A key's record says which models it may call and its limits.  While no key
exists at all, the gateway is open (development mode) and says so at start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from zope.interface import Interface, implementer

from txgateway.config import KeyConfig
from txgateway.limits import Limits
from txgateway.store import KeyRecord, hash_key

log = Logger()


@attrs.frozen
class Principal:
    """An authenticated caller.  ``key_id`` names the key without revealing it."""

    key_id: str | None = None
    name: str = ""
    #: Globs of the models the key may call; empty for all.
    models: tuple[str, ...] = ()
    #: What the limiter counts for this key; None when nothing is limited.
    limits: Limits | None = None

    def may_use(self, model: str) -> bool:
        return not self.models or any(fnmatchcase(model, glob) for glob in self.models)


#: The caller of an open gateway.
ANONYMOUS = Principal()


class IAuthenticator(Interface):
    def authenticate(key: str | None) -> Deferred:  # noqa: N805 (zope interface)
        """Fires with the caller behind ``key`` (None when none was sent), or None to refuse."""

    def authenticate_hash(key_hash: str | None) -> Deferred:  # noqa: N805
        """`authenticate` for a key known only by its `hash_key` (an ephemeral key's parent)."""


def principal_of(record: KeyRecord) -> Principal:
    limits = Limits(requests_per_minute=record.requests_per_minute,
                    tokens_per_minute=record.tokens_per_minute,
                    budget_usd=record.budget_usd, budget_period=record.budget_period)
    return Principal(key_id=record.id, name=record.name, models=record.allowed_models,
                     limits=None if limits == Limits() else limits)


def declared_record(key: KeyConfig) -> KeyRecord:
    """The record of a key declared in the config (its id derives from its name)."""
    return KeyRecord(
        id="cfg_" + key.name, hash=key.hash.lower() or hash_key(key.key), name=key.name,
        prefix=key.key[:8], allowed_models=key.models,
        requests_per_minute=key.requests_per_minute, tokens_per_minute=key.tokens_per_minute,
        budget_usd=key.budget_usd, budget_period=key.budget_period,
        metadata=dict(key.metadata))


@implementer(IAuthenticator)
class KeyAuthenticator:
    """
    Checks keys against the config's, then the store's.  Store lookups are cached for
    ``cache_seconds`` (refusals too, so a flood of bad keys does not reach the database);
    that is also how long another process's revocation takes to be seen here, and, while the
    gateway is open, the first key another process creates.
    """

    max_cached = 100_000
    #: How long a lookup is trusted (the docs promise 10 s).
    cache_seconds = 10.0

    def __init__(self, clock: Callable[[], float], store: Any, declared: Sequence[KeyConfig],
                 cache_seconds: float | None = None) -> None:
        self._clock = clock
        self._store = store
        self._declared = {record.hash: principal_of(record)
                          for record in map(declared_record, declared)}
        self._cache_seconds = self.cache_seconds if cache_seconds is None else cache_seconds
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        #: True while no key exists anywhere: every caller is let in.
        self.open = not self._declared
        #: While open, when to ask the store again whether a key exists.
        self._open_until = 0.0

    async def start(self) -> None:
        """Find out whether keys exist in the store (the gateway is open if none)."""
        if await self._still_open():
            log.warn("txgateway is OPEN: no API keys are configured, so every caller is let "
                     "in. Declare keys in the config or create them with POST /admin/keys.")

    def key_created(self) -> None:
        """A key now exists: callers must show one from now on."""
        self.open = False

    def forget(self, key_hash: str) -> None:
        """A key changed or was revoked: look it up afresh next time."""
        self._cache.pop(key_hash, None)

    async def _still_open(self) -> bool:
        """Whether the gateway stays open: no key in the config, none live in the store."""
        if self.open:
            # Set first: the callers that arrive meanwhile need not ask the store too.
            self._open_until = self._clock() + self._cache_seconds
            self.open = not any(record.revoked_at is None
                                for record in await self._store.list_keys())
        return self.open

    def authenticate(self, key: str | None) -> Deferred:
        return self.authenticate_hash(hash_key(key) if key else None)

    def authenticate_hash(self, key_hash: str | None) -> Deferred:
        if self.open:
            if self._open_until > self._clock():
                return succeed(ANONYMOUS)
            return Deferred.fromCoroutine(self._authenticate_after_check(key_hash))
        if not key_hash:
            return succeed(None)
        declared = self._declared.get(key_hash)
        if declared is not None:
            return succeed(declared)
        cached = self._cache.get(key_hash)
        if cached is not None and cached[0] > self._clock():
            return succeed(cached[1])
        return Deferred.fromCoroutine(self._look_up(key_hash))

    async def _authenticate_after_check(self, key_hash: str | None) -> Principal | None:
        if await self._still_open():
            return ANONYMOUS
        return await self.authenticate_hash(key_hash)

    async def _look_up(self, key_hash: str) -> Principal | None:
        record = await self._store.key_by_hash(key_hash)
        now = self._clock()
        principal = None
        if (record is not None and record.revoked_at is None
                and (record.expires_at is None or record.expires_at > now)):
            principal = principal_of(record)
        if len(self._cache) >= self.max_cached:
            self._cache.clear()
        self._cache[key_hash] = (now + self._cache_seconds, principal)
        return principal


def caller_key(request: Any) -> str | None:
    """
    The key a caller sent: ``Authorization: Bearer`` (OpenAI's SDK) or ``x-api-key``
    (Anthropic's).
    """
    authorization = request.getHeader(b"authorization") or b""
    if authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip().decode("latin-1") or None
    key = request.getHeader(b"x-api-key")
    return key.decode("latin-1") if key else None
