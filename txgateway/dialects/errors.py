"""
An upstream's error answer, made the caller's: one place for every endpoint.

The upstream's own error object passes as it came when it is in the caller's dialect; any other
body (a proxy's HTML page, an OpenAI error to a Messages caller, a 200 that does not parse) is
said in a new error object of the caller's dialect.  Either way its secrets are scrubbed first
(`txgateway.dialects.redact`).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import orjson

from txgateway.dialects import anthropic, cohere, openai
from txgateway.dialects.redact import Redactor


@attrs.frozen
class ErrorDialect:
    """How a caller's dialect writes an error, recognises one of its own, and words refusals."""

    is_error_body: Callable[[bytes], bool]
    #: ``(status, message, code) -> bytes``.
    error_body: Callable[[int, str, str], bytes]
    #: A 401 for a call with no key at all, and for a key that is not known.
    missing_key: str
    incorrect_key: str
    #: The 404 message for a model no route serves.
    unknown_model: Callable[[str], str]


OPENAI = ErrorDialect(
    openai.is_error_body, openai.error_body,
    missing_key=("You didn't provide an API key. You need to provide your API key in an "
                 "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."),
    incorrect_key="Incorrect API key provided.",
    unknown_model=lambda model: (f"The model `{model}` does not exist or you do not have "
                                 "access to it."))
ANTHROPIC = ErrorDialect(
    anthropic.is_error_body,
    lambda status, message, code: anthropic.error_body(status, message),
    missing_key="x-api-key header is required", incorrect_key="invalid x-api-key",
    unknown_model=lambda model: f"model: {model}")
COHERE = ErrorDialect(
    cohere.is_error_body,
    lambda status, message, code: cohere.error_body(status, message),
    missing_key="no api key supplied", incorrect_key="invalid api token",
    unknown_model=lambda model: f"model '{model}' not found")


def upstream_error(dialect: ErrorDialect, status: int, body: bytes,
                   redactor: Redactor) -> tuple[int, bytes]:
    """
    The status and body the caller gets for an upstream's answer that is no success: a
    status that is no 4xx becomes 502 unless the upstream said what went wrong.
    """
    body = redactor.bytes(body)
    if status != 200 and dialect.is_error_body(body):
        return status, body
    message = _openai_message(body)
    if message is None or status == 200:
        message = f"the upstream answered {status}: {body[:200].decode('utf-8', 'replace')}"
        status = status if 400 <= status < 500 else 502
    return status, dialect.error_body(status, message, "upstream_error")


def _openai_message(body: bytes) -> str | None:
    """
    The message of an OpenAI error object (what translating providers make), or of vLLM's
    ``{"error": "..."}``; None for anything else.
    """
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error["message"]
    return error if isinstance(error, str) else None
