"""
Virtual keys in the admin API.

``GET /admin/keys`` lists them, ``POST /admin/keys`` makes one (its secret is in that answer
and nowhere else, ever), ``GET``/``PATCH``/``DELETE /admin/keys/{id}`` read, change and revoke
one.  Keys declared in the config are listed too, read-only.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs
import orjson

from txgateway.auth import declared_record
from txgateway.config import ConfigError, structure
from txgateway.dialects.openai import error_body
from txgateway.limits import Limits
from txgateway.store import KeyRecord
from txgateway.web.openapi import Endpoint, Operation
from txgateway.web.resource import Collection, Item, answer_later


@attrs.frozen
class KeyFields:
    """What a caller of ``POST``/``PATCH`` may set; None leaves a field as it is."""

    name: str | None = None
    models: tuple[str, ...] | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    budget_usd: float | None = None
    budget_period: Literal["day", "month", "total"] | None = None
    metadata: dict[str, str] | None = None
    expires_at: float | None = None

    def changes(self) -> dict[str, Any]:
        """The fields set, under `KeyRecord`'s names."""
        changes = {name: value for name, value in attrs.asdict(self, recurse=False).items()
                   if value is not None}
        if "models" in changes:
            changes["allowed_models"] = changes.pop("models")
        return changes


MAX_LIMIT = 2 ** 63 - 1


class _Problem(Exception):
    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _fields(request: Any) -> KeyFields:
    try:
        document = orjson.loads(request.content.getvalue() or b"{}")
    except orjson.JSONDecodeError:
        raise _Problem(400, "The body is not valid JSON.", "invalid_json") from None
    try:
        fields = structure(document, KeyFields, "")
    except ConfigError as error:
        raise _Problem(400, "; ".join(error.problems), "invalid_key_fields") from None
    for name in ("requests_per_minute", "tokens_per_minute"):
        # The stores keep limits as 64-bit integers.
        if not 0 <= (getattr(fields, name) or 0) <= MAX_LIMIT:
            raise _Problem(400, f"{name}: expected an integer from 0 to {MAX_LIMIT}",
                           "invalid_key_fields")
    return fields


def _guard(request: Any, work: Any) -> Any:
    """Answer a `_Problem` raised before or while the work runs as an error."""

    async def guarded() -> tuple[int, Any]:
        try:
            return await work()
        except _Problem as problem:
            return problem.status, error_body(problem.status, str(problem), problem.code)

    return answer_later(request, guarded())


class _OneKey(Item):
    openapi = Endpoint("Admin", {
        "GET": Operation("Retrieve a key, with its spend", None, "Key"),
        "PATCH": Operation("Change a key's limits or budget", "KeyFields", "Key"),
        "POST": Operation("Change a key (as PATCH)", "KeyFields", "Key"),
        "DELETE": Operation("Revoke a key", None, "Key")})

    async def _record(self) -> KeyRecord:
        if self._id.startswith("cfg_"):
            raise _Problem(409, "Keys declared in the config are changed in the config.",
                           "key_in_config")
        record = await self._gateway.store.get_key(self._id)
        if record is None:
            raise _Problem(404, f"No key {self._id!r}.", "key_not_found")
        return record

    def render_GET(self, request: Any) -> Any:
        async def shown() -> tuple[int, Any]:
            for key in self._gateway.config.keys:
                record = declared_record(key)
                if record.id == self._id:
                    return 200, await self._with_spend(record)
            return 200, await self._with_spend(await self._record())

        return _guard(request, shown)

    async def _with_spend(self, record: KeyRecord) -> dict[str, Any]:
        """
        The record with ``spent_usd``: against a budget, the current period's as the limiter
        counts it; without one, everything the ledger holds for the key.
        """
        shown = record.to_json()
        if record.budget_usd:
            limits = Limits(budget_usd=record.budget_usd, budget_period=record.budget_period)
            shown["spent_usd"] = await self._gateway.limiter.spent(record.id, limits)
        else:
            rows = await self._gateway.store.usage_report("key")
            shown["spent_usd"] = sum(row["cost_usd"] or 0.0 for row in rows
                                     if row["key"] == record.id)
        return shown

    def render_PATCH(self, request: Any) -> Any:
        async def changed() -> tuple[int, Any]:
            changes = _fields(request).changes()
            record = attrs.evolve(await self._record(), **changes)
            await self._gateway.store.put_key(record)
            self._gateway.authenticator.forget(record.hash)
            return 200, record.to_json()

        return _guard(request, changed)

    render_POST = render_PATCH

    def render_DELETE(self, request: Any) -> Any:
        async def revoked() -> tuple[int, Any]:
            record = await self._record()
            if record.revoked_at is None:
                record = attrs.evolve(record, revoked_at=self._gateway.reactor.seconds())
                await self._gateway.store.put_key(record)
            self._gateway.authenticator.forget(record.hash)
            return 200, dict(record.to_json(), deleted=True)

        return _guard(request, revoked)


class Keys(Collection):
    openapi = Endpoint("Admin", {"GET": Operation("List virtual keys", None, "List"),
                                 "POST": Operation("Create a key (its secret is shown once)",
                                                   "KeyFields", "Key")}, item="{key_id}")
    item = _OneKey

    def render_GET(self, request: Any) -> Any:
        async def listed() -> tuple[int, Any]:
            declared = [dict(declared_record(key).to_json(), source="config")
                        for key in self._gateway.config.keys]
            stored = [dict(record.to_json(), source="store")
                      for record in await self._gateway.store.list_keys()]
            return 200, {"object": "list", "data": declared + stored}

        return _guard(request, listed)

    def render_POST(self, request: Any) -> Any:
        async def created() -> tuple[int, Any]:
            fields = _fields(request)
            secret, record = KeyRecord.new_key(**fields.changes())
            await self._gateway.store.put_key(record)
            self._gateway.authenticator.key_created()
            return 201, dict(record.to_json(), key=secret)

        return _guard(request, created)
