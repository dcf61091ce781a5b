"""
The gateway's persistent store: the usage ledger, virtual keys and stored JSON objects.

One interface, `IStore`, with two backends chosen by URL: SQLite (embedded, the default) and
PostgreSQL (shared by many gateway processes).  Every method returns a Deferred; the blocking
database calls run in the backend's own threads.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
from zope.interface import Interface

from txgateway.limits import Period

#: What every secret key the gateway issues starts with.
SECRET_PREFIX = "sk-gw-"


@attrs.frozen
class UsageRecord:
    """One line of the usage ledger: a REST request or a realtime session."""

    request_id: str
    time: float
    kind: str
    route: str
    key_id: str | None
    model: str
    provider: str
    upstream_model: str
    status: int
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_creation_tokens: int = 0
    reasoning_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    images: int = 0
    audio_seconds: float = 0.0
    search_units: int = 0
    estimated: bool = False
    cost_usd: float = 0.0
    duration_ms: float = 0.0
    ttft_ms: float | None = None


def hash_key(secret: str) -> str:
    """The sha256 hex digest a key is stored and looked up by; the secret itself never is."""
    return hashlib.sha256(secret.encode()).hexdigest()


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


@attrs.frozen
class KeyRecord:
    """A virtual key: its public id, the hash of its secret, and its limits."""

    id: str
    hash: str
    name: str = ""
    prefix: str = ""
    allowed_models: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    requests_per_minute: int = 0
    tokens_per_minute: int = 0
    budget_usd: float = 0.0
    budget_period: Period = "month"
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    created_at: float = 0.0
    revoked_at: float | None = None
    expires_at: float | None = None

    @classmethod
    def new_key(cls, name: str = "", **fields: Any) -> tuple[str, KeyRecord]:
        """
        A fresh secret and its record.  The secret is returned once, to hand to the caller;
        only its hash is kept.  ``fields`` are any other `KeyRecord` fields.
        """
        secret = SECRET_PREFIX + secrets.token_urlsafe(30)
        fields.setdefault("created_at", time.time())
        record = cls(
            id="key_" + secrets.token_hex(12),
            hash=hash_key(secret),
            name=name,
            prefix=secret[:8],
            **fields,
        )
        return secret, record

    def to_json(self) -> dict[str, Any]:
        """The record as the admin API shows it: everything but the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "allowed_models": list(self.allowed_models),
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "budget_usd": self.budget_usd,
            "budget_period": self.budget_period,
            "metadata": dict(self.metadata),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "expires_at": self.expires_at,
        }


class IStore(Interface):
    """Where the gateway keeps what must outlive a process.  Every method returns a Deferred."""

    def start():  # noqa: N805 (zope interface)
        """Connect and bring the schema up to date."""

    def close():  # noqa: N805
        """Close the connections; flush the `Ledger` first."""

    def check():  # noqa: N805
        """Fires True when the database answers a trivial query (a readiness probe)."""

    def write_usage(records):  # noqa: N805
        """Insert ``records`` in one transaction; a request_id already stored is skipped."""

    def usage_report(group_by, start=None, end=None, bucket=None):  # noqa: N805
        """
        Usage summed by ``group_by`` ("key", "model" or "provider") and, when ``bucket`` is
        "hour" or "day", by UTC time bucket, over ``start <= time < end``: a list of dicts
        ``{group_by: value, ["bucket": "2026-11-23T00:00:00Z",] "requests": n, <token sums>,
        "images": n, "audio_seconds": x, "search_units": n, "cost_usd": x, "errors": n}``
        ordered by bucket then group value (None first).  Raises ValueError for an unknown
        grouping or bucket.
        """

    def put_key(record):  # noqa: N805
        """Insert a `KeyRecord`, or replace the one with its id."""

    def get_key(key_id):  # noqa: N805
        """The `KeyRecord` with this id, or None."""

    def key_by_hash(hash):  # noqa: N805
        """The `KeyRecord` whose secret hashes to ``hash``, or None."""

    def list_keys():  # noqa: N805
        """Every `KeyRecord`, oldest first."""

    def put_object(kind, object_id, owner, data, created_at):  # noqa: N805
        """Insert a JSON document, or replace the one with this kind and id."""

    def get_object(kind, object_id):  # noqa: N805
        """The document, or None."""

    def delete_object(kind, object_id):  # noqa: N805
        """Fires True when a document was deleted, False when there was none."""

    def list_objects(kind, owner, after, limit, order="desc"):  # noqa: N805
        """
        Up to ``limit`` documents of ``kind`` ordered by (created_at, id), ``order`` "asc" or
        "desc"; only ``owner``'s when it is not None; only those after the document with id
        ``after`` in that order when it is given (none when that document does not exist).
        """


def open_store(url: str, reactor: Any) -> IStore:
    """
    The store a config URL names: ``sqlite:PATH`` (relative to the working directory),
    ``sqlite::memory:``, or ``postgresql://user@host:port/db``.  Not started yet.
    """
    if url.startswith("sqlite:"):
        path = url[len("sqlite:"):]
        if not path:
            raise ValueError(f"store URL {url!r} names no file: use sqlite:PATH")
        from txgateway.store.sqlite import SQLiteStore

        return SQLiteStore(path if path == ":memory:" else os.path.abspath(path), reactor)
    if url.startswith(("postgresql://", "postgres://")):
        from txgateway.store.postgres import PostgresStore

        return PostgresStore(url, reactor)
    scheme = url.partition(":")[0]  # not the whole URL: it may hold a password
    raise ValueError(
        f"unknown store URL scheme {scheme!r}: expected sqlite:PATH, sqlite::memory: or "
        "postgresql://user@host:port/db")
