"""
The schema, as numbered migrations recorded in a ``schema_version`` table.

Each migration runs once, in the transaction that records it.  The backend calls `migrate`
inside a transaction that already excludes other migrating processes (SQLite: ``BEGIN
IMMEDIATE``; PostgreSQL: an advisory lock), so running it twice, or from two processes at once,
applies each migration exactly once.  The SQL is portable; ``{json}`` is the one type that
differs (TEXT in SQLite, JSONB in PostgreSQL).
"""

from __future__ import annotations

import time
from typing import Any

MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        """CREATE TABLE usage_ledger (
            request_id TEXT PRIMARY KEY,
            started_at DOUBLE PRECISION NOT NULL,
            kind TEXT NOT NULL,
            route TEXT NOT NULL,
            key_id TEXT,
            model TEXT NOT NULL,
            provider TEXT NOT NULL,
            upstream_model TEXT NOT NULL,
            status INTEGER NOT NULL,
            input_tokens BIGINT NOT NULL,
            output_tokens BIGINT NOT NULL,
            cached_input_tokens BIGINT NOT NULL,
            cache_creation_tokens BIGINT NOT NULL,
            reasoning_tokens BIGINT NOT NULL,
            input_text_tokens BIGINT NOT NULL,
            input_audio_tokens BIGINT NOT NULL,
            output_text_tokens BIGINT NOT NULL,
            output_audio_tokens BIGINT NOT NULL,
            estimated BOOLEAN NOT NULL,
            cost_usd DOUBLE PRECISION NOT NULL,
            duration_ms DOUBLE PRECISION NOT NULL,
            ttft_ms DOUBLE PRECISION
        )""",
        "CREATE INDEX usage_ledger_started_at ON usage_ledger (started_at)",
        "CREATE INDEX usage_ledger_key_started_at ON usage_ledger (key_id, started_at)",
        """CREATE TABLE gateway_keys (
            id TEXT PRIMARY KEY,
            hash TEXT NOT NULL UNIQUE,
            name TEXT NOT NULL,
            prefix TEXT NOT NULL,
            allowed_models TEXT NOT NULL,
            requests_per_minute INTEGER NOT NULL,
            tokens_per_minute INTEGER NOT NULL,
            budget_usd DOUBLE PRECISION NOT NULL,
            budget_period TEXT NOT NULL,
            metadata TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            revoked_at DOUBLE PRECISION,
            expires_at DOUBLE PRECISION
        )""",
        """CREATE TABLE stored_objects (
            kind TEXT NOT NULL,
            id TEXT NOT NULL,
            owner TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            data {json} NOT NULL,
            PRIMARY KEY (kind, id)
        )""",
        "CREATE INDEX stored_objects_created ON stored_objects (kind, created_at, id)",
        "CREATE INDEX stored_objects_owner ON stored_objects (kind, owner, created_at, id)",
    )),
    # What images, audio and rerank calls are priced by, beside their tokens.
    (2, (
        "ALTER TABLE usage_ledger ADD COLUMN images BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE usage_ledger ADD COLUMN audio_seconds DOUBLE PRECISION NOT NULL DEFAULT 0",
        "ALTER TABLE usage_ledger ADD COLUMN search_units BIGINT NOT NULL DEFAULT 0",
    )),
)

LATEST = MIGRATIONS[-1][0]


def migrate(cursor: Any, placeholder: str, json_type: str) -> list[int]:
    """Apply the migrations not yet recorded; the versions applied, in order."""
    cursor.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        "version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
    cursor.execute("SELECT MAX(version) FROM schema_version")
    current = cursor.fetchone()[0] or 0
    if current > LATEST:
        raise RuntimeError(
            f"the database schema is version {current}, newer than this gateway's {LATEST}")
    applied = []
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        for statement in statements:
            cursor.execute(statement.format(json=json_type))
        cursor.execute(
            f"INSERT INTO schema_version (version, applied_at) VALUES ({placeholder}, "
            f"{placeholder})", (version, time.time()))
        applied.append(version)
    return applied
