"""
Hypothesis strategies for malformed request bodies: a valid request per endpoint with one
value replaced by something of the wrong type, an odd number, odd unicode or deep nesting,
or a key dropped; and what a gateway must answer to each (a 4xx in the caller's dialect).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

#: A Messages request touching every block type the gateway translates.
MESSAGES = {
    "model": "demo", "max_tokens": 50, "system": [{"type": "text", "text": "Be brief."}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "Hi"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBORw0KGgo="}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "hmm", "signature": "sig"},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1",
             "content": [{"type": "text", "text": "ok"}]}]},
    ],
    "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
    "tool_choice": {"type": "auto"}, "temperature": 0.5, "top_p": 0.9, "top_k": 5,
    "stop_sequences": ["END"], "metadata": {"user_id": "u"},
    "thinking": {"type": "enabled", "budget_tokens": 1024}, "stream": False,
}

#: A Responses request with every item kind the translation to chat reads.
RESPONSES = {
    "model": "demo", "instructions": "Be brief.", "max_output_tokens": 50,
    "input": [
        {"role": "user", "content": [
            {"type": "input_text", "text": "Hi"},
            {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "Hello"}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "ok"},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hm"}]},
    ],
    "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
    "tool_choice": "auto", "temperature": 0.5, "top_p": 0.9,
    "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
    "reasoning": {"effort": "low"}, "metadata": {"k": "v"}, "stream": False,
}

#: A chat completions request with every part the translation to Messages reads.
CHAT = {
    "model": "demo", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [
            {"type": "text", "text": "Hi"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    "tool_choice": "auto", "max_tokens": 20, "temperature": 0.5, "top_p": 0.9, "stop": ["END"],
    "response_format": {"type": "json_object"}, "reasoning_effort": "low",
    "parallel_tool_calls": True, "stream": False,
}

#: An admin API key.
KEY = {"name": "k", "models": ["demo"], "requests_per_minute": 10, "tokens_per_minute": 100,
       "budget_usd": 1.5, "budget_period": "day", "metadata": {"team": "a"},
       "expires_at": 2000000000.0}

ODD_NUMBERS = st.sampled_from([
    10 ** 30, -(10 ** 30), 2 ** 63, 2 ** 64, -1, 0, 1e308, -1e308, 1e-320, 0.5,
    float("inf"), float("-inf"), float("nan")])
ODD_TEXT = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["\ud800", "\udfff", "\x00", "\u202e", "\ufeff", "𝔘𝔫𝔦", "a" * 30000,
                     # Names cut at separators to find a price: a long one stalled the reactor.
                     "-" * 30000, "gpt-4o" + "-@" * 15000]))
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), ODD_NUMBERS,
                   ODD_TEXT)
VALUES = st.recursive(LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, the root aside."""
    found = []
    children = (value.items() if isinstance(value, dict)
                else enumerate(value) if isinstance(value, list) else ())
    for key, child in children:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


def replaced(document: Any, path: tuple[Any, ...], value: Any) -> Any:
    """A copy of ``document`` with the value at ``path`` replaced (``_DROP``: removed)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(document, dict):
        copy = dict(document)
    else:
        copy = list(document)
    new = replaced(copy[head], rest, value)
    if new is _DROP:
        del copy[head]
    else:
        copy[head] = new
    return copy


_DROP = object()


#: Stands for deep nesting until the body is written (the stdlib's encoder would recurse).
_NEST = "\x00nest"


def nested(depth: int) -> str:
    return _NEST + str(depth)


def _deepen(body: str) -> str:
    start = body.find(json.dumps(_NEST)[:-1])
    if start < 0:
        return body
    end = body.index('"', start + 1)
    depth = int(body[start + len(json.dumps(_NEST)) - 1:end])
    return body[:start] + '{"a": [' * depth + "1" + "]}" * depth + body[end + 1:]


@st.composite
def mutations(draw: Any, template: dict[str, Any], models: list[str]) -> bytes:
    """A body of ``template`` for one of ``models`` with one value made wrong."""
    document = {**template, "model": draw(st.sampled_from(models))} if models else template
    path = draw(st.sampled_from(paths(document)))
    change = draw(st.one_of(
        VALUES, st.just(_DROP), st.integers(2, 1500).map(nested),
        st.builds(lambda v: [v], VALUES), st.builds(lambda v: {"x": v}, VALUES)))
    body = replaced(document, path, change)
    if draw(st.booleans()):
        body = {**body, "stream": True} if isinstance(body, dict) else body
    # The stdlib writes big ints, NaN and Infinity (which are not JSON), and lone surrogates.
    return _deepen(json.dumps(body)).encode("utf-8", "surrogatepass")


def check_openai_error(status: int, body: bytes) -> str | None:
    """What is wrong with an OpenAI-dialect answer to a malformed body, or None."""
    if status >= 500:
        return f"status {status}"
    if status < 400:
        return None
    try:
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["type"]
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"not an OpenAI error: {body[:200]!r}"
    return None


def check_anthropic_error(status: int, body: bytes) -> str | None:
    """What is wrong with a Messages-dialect answer to a malformed body, or None."""
    if status >= 500:
        return f"status {status}"
    # The site refuses an oversized body before any endpoint sees it, in OpenAI's dialect.
    if status < 400 or status == 413:
        return None
    try:
        document = json.loads(body)
        assert document["type"] == "error"
        assert isinstance(document["error"]["message"], str) and document["error"]["type"]
    except (ValueError, KeyError, TypeError, AssertionError):
        return f"not an Anthropic error: {body[:200]!r}"
    return None
