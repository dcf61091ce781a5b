"""
The JSONL of native batches, both ways.

In: each line of a batch input file names a model; `BatchInput` routes it as the gateway
routes a call, checks the caller's key may use it, and rewrites the alias to the upstream
model, line by line as the upload arrives.  Every line must land on the same provider, one
that serves batches: a batch runs where its input file is.

Out: each line of a batch's output file carries its request's usage; `BatchOutput` reads them
as the file is relayed, and `enter_usage` puts them into the usage ledger once per batch (the
record ids are ``{batch_id}:{custom_id}``, which the store never writes twice, and a marker
stored beside the batch's record, kind ``batch_usage``, makes a second read neither re-enter
nor re-count them; being its own record, refreshing the batch's cannot undo it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from twisted.logger import Logger

from txgateway.admission import Refusal
from txgateway.auth import Principal
from txgateway.dialects.openai import loads_object
from txgateway.dialects.openai_rest import usage_of
from txgateway.gateway import Gateway
from txgateway.providers import OPENAI_WIRE, IProvider, speaks
from txgateway.routing import Target
from txgateway.store import UsageRecord
from txgateway.usage import Usage

log = Logger()

#: Store kinds of the gateway's records of provider-held objects, and of a batch's usage
#: having been entered.
FILE, BATCH, BATCH_USAGE = "file", "batch", "batch_usage"
#: What a batch request costs against the same request made at once: OpenAI and Azure bill
#: batches at half price (https://platform.openai.com/docs/guides/batch).
BATCH_PRICE_FACTOR = 0.5
#: Batch ids whose usage is being entered by this process, against a concurrent second read.
_entering: set[str] = set()


def serves_batches(provider: IProvider) -> bool:
    return {"files", "batches"} <= provider.apis and speaks(provider, OPENAI_WIRE)


class BatchInput:
    """
    A batch input file's lines as they arrive: ``feed(bytes) -> bytes`` of the complete lines
    routed and rewritten, ``finish()`` for the last one.  ``provider`` is where the batch
    must run (pinned by the caller, or by the first line), ``aliases`` the caller's model of
    each ``custom_id`` and ``upstream_models`` the upstream model of each alias.
    """

    def __init__(self, plan: Callable[[str], list[Target] | None], principal: Principal,
                 pinned: IProvider | None = None) -> None:
        self._plan = plan
        self._principal = principal
        self._pinned = pinned is not None
        self.provider = pinned
        self.aliases: dict[str, str] = {}
        self.upstream_models: dict[str, str] = {}
        self._pending = b""
        self._number = 0

    def feed(self, chunk: bytes) -> bytes:
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        return b"".join(self._line(line) for line in lines)

    def finish(self) -> bytes:
        last, self._pending = self._pending, b""
        out = self._line(last)
        if not self.aliases:
            raise Refusal(400, "the batch input file has no requests", "invalid_batch_input",
                          "file")
        return out

    def _line(self, raw: bytes) -> bytes:
        self._number += 1
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            return b""
        number = self._number
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _invalid(number, "is not JSON") from None
        if not isinstance(line, dict):
            raise _invalid(number, "is not a JSON object")
        custom_id, body = line.get("custom_id"), line.get("body")
        if not isinstance(custom_id, str) or not custom_id:
            raise _invalid(number, "has no custom_id")
        if custom_id in self.aliases:
            raise _invalid(number, f"repeats the custom_id `{custom_id}`")
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise _invalid(number, "has no body with a model")
        model = body["model"]
        target = self._target(number, model)
        self.aliases[custom_id] = model
        self.upstream_models[model] = target.model
        if target.model == model:
            return raw + b"\n"
        return orjson.dumps({**line, "body": {**body, "model": target.model}}) + b"\n"

    def _target(self, number: int, model: str) -> Target:
        if not self._principal.may_use(model):
            raise Refusal(403, f"line {number} of the batch input: this key may not use the "
                          f"model `{model}`", "model_not_allowed", "file")
        plan = self._plan(model)
        if plan is None:
            raise Refusal(400, f"line {number} of the batch input: the model `{model}` does "
                          "not exist or you do not have access to it", "model_not_found",
                          "file")
        serving = [target for target in plan if serves_batches(target.provider)]
        if not serving:
            raise Refusal(400, f"line {number} of the batch input: the model `{model}` is "
                          f"served by the provider `{plan[0].provider.name}`, which does not "
                          "offer the batches API", "unsupported_api", "file")
        if self.provider is None:
            self.provider = serving[0].provider
        for target in serving:
            if target.provider.name == self.provider.name:
                return target
        where = ("the provider named by ?provider=" if self._pinned
                 else "the earlier lines' provider")
        raise Refusal(400, f"line {number} of the batch input: the model `{model}` is served "
                      f"by `{serving[0].provider.name}`, not by `{self.provider.name}` "
                      f"({where}); a batch runs on one provider", "mixed_providers", "file")


def _invalid(number: int, what: str) -> Refusal:
    return Refusal(400, f"line {number} of the batch input {what}", "invalid_batch_input",
                   "file")


class BatchOutput:
    """
    A batch output file's lines as they are relayed (``feed``, ``finish``): the status and
    usage of each request that ran, by ``custom_id``.
    """

    def __init__(self) -> None:
        self.results: list[tuple[str, int, Usage | None]] = []
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        lines = (self._pending + chunk).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            self._line(line)

    def finish(self) -> None:
        self._line(self._pending)
        self._pending = b""

    def _line(self, raw: bytes) -> None:
        if not raw.strip():
            return
        line = loads_object(raw) or {}
        response = line.get("response")
        if not isinstance(response, dict) or not isinstance(line.get("custom_id"), str):
            return  # a request that never ran: nothing to count
        body = response.get("body")
        usage = usage_of(body.get("usage")) if isinstance(body, dict) else None
        status = response.get("status_code")
        self.results.append((line["custom_id"], status if isinstance(status, int) else 0,
                             usage))


async def enter_usage(gateway: Gateway, batch_id: str, principal: Principal,
                      output: BatchOutput) -> None:
    """
    The usage of a batch's requests into the ledger, metrics and the owner's budget, unless
    its record says it already was.  ``principal`` is the batch's owner.
    """
    if batch_id in _entering:
        return
    _entering.add(batch_id)
    try:
        store = gateway.store
        held = await store.get_object(BATCH, batch_id)
        if held is None or await store.get_object(BATCH_USAGE, batch_id) is not None:
            return
        now = gateway.reactor.seconds()
        await store.put_object(BATCH_USAGE, batch_id, held["owner"],
                               {"owner": held["owner"], "entered_at": now}, now)
        _account(gateway, batch_id, held, principal, output, now)
    finally:
        _entering.discard(batch_id)


def _account(gateway: Gateway, batch_id: str, held: dict[str, Any], principal: Principal,
             output: BatchOutput, now: float) -> None:
    completed = held["batch"].get("completed_at")
    when = completed if isinstance(completed, int | float) else now
    aliases, upstream_models = held["aliases"], held["upstream_models"]
    provider, kind = held["provider"], held["provider_kind"]
    spent = 0.0
    for custom_id, status, usage in output.results:
        model = aliases.get(custom_id, "")
        upstream_model = upstream_models.get(model, model)
        usage = usage or Usage()
        cost = (gateway.prices.cost(upstream_model, usage) or 0.0) * BATCH_PRICE_FACTOR
        spent += cost
        if model:  # only routed names become metric labels
            gateway.metrics.tokens("batches", kind, model, "input", usage.input_tokens)
            gateway.metrics.tokens("batches", kind, model, "output", usage.output_tokens)
            if cost:
                gateway.metrics.cost("batches", provider, model, cost)
        gateway.ledger.append(UsageRecord(
            request_id=f"{batch_id}:{custom_id}", time=when, kind="batch", route="batches",
            key_id=held["owner"], model=model, provider=provider,
            upstream_model=upstream_model, status=status, input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens, cached_input_tokens=usage.cached_input_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            input_audio_tokens=usage.input_audio_tokens,
            input_text_tokens=usage.input_tokens - usage.input_audio_tokens,
            output_audio_tokens=usage.output_audio_tokens,
            output_text_tokens=usage.output_tokens - usage.output_audio_tokens,
            cost_usd=cost))
    if principal.key_id is not None and principal.limits is not None and spent:
        # The budget only: a day's batch is no burst in this minute's token rate.
        gateway.limiter.commit(principal.key_id, principal.limits, 0, 0, spent).addErrback(
            lambda failure: log.failure("limiter commit failed", failure))
