"""
Scrubbing secrets out of what upstreams say before a caller or a log sees it.

An upstream's error may quote the credentials it was sent (``Incorrect API key provided:
sk-...``, a proxy's HTML page echoing headers); a caller may send its own gateway key as a
model name.  Every configured secret, and anything shaped like a key, is replaced by
`REDACTED` in upstream error bodies and messages.  Only error paths pay for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs

REDACTED = "[redacted]"

#: Shapes of keys whoever issued them: OpenAI / Anthropic / gateway keys (``sk-``), ephemeral
#: realtime secrets (``ek_``), AWS access key ids, Google API keys and OAuth tokens, bearer
#: tokens.
KEY_SHAPED = re.compile(
    r"\b(?:sk-[A-Za-z0-9_\-]{12,}|ek_[A-Za-z0-9_\-]{12,}|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_\-]{30,}|ya29\.[0-9A-Za-z_\-.]{12,})"
    r"|(?<=Bearer )[A-Za-z0-9_\-.=+/]{12,}")

#: Settings fields that hold a secret, by a word in their name.
_SECRET_FIELD = re.compile(r"key|secret|token|password", re.IGNORECASE)
#: Shorter values are no secret worth the name, and would scrub common words.
_SHORTEST = 8


@attrs.frozen
class Redactor:
    """Replaces the ``secrets`` given, and key-shaped strings, by `REDACTED`."""

    secrets: tuple[str, ...] = ()
    _pattern: re.Pattern[str] = attrs.field(init=False)
    _bytes_pattern: re.Pattern[bytes] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        known = sorted({s for s in self.secrets if len(s) >= _SHORTEST}, key=len, reverse=True)
        source = "|".join([*map(re.escape, known), KEY_SHAPED.pattern])
        object.__setattr__(self, "_pattern", re.compile(source))
        object.__setattr__(self, "_bytes_pattern", re.compile(source.encode()))

    def text(self, text: str) -> str:
        return self._pattern.sub(REDACTED, text)

    def bytes(self, data: bytes) -> bytes:
        return self._bytes_pattern.sub(REDACTED.encode(), data)


def secrets_of(config: Any) -> tuple[str, ...]:
    """
    Every secret a gateway config holds: its virtual keys, the admin key, and each
    provider's credential fields and extra header values.
    """
    found = [key.key for key in config.keys]
    found.append(config.admin.token)
    for provider in config.providers.values():
        settings = provider.settings
        if not attrs.has(type(settings)):
            continue
        for field in attrs.fields(type(settings)):
            value = getattr(settings, field.name)
            if isinstance(value, str) and _SECRET_FIELD.search(field.name):
                found.append(value)
            elif isinstance(value, dict) and field.name == "headers":
                found.extend(str(v) for v in value.values())
    return tuple(found)


def redactor_of(config: Any, extra: Iterable[str] = ()) -> Redactor:
    return Redactor((*secrets_of(config), *extra))
