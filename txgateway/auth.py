"""
Who is calling: the seam where a caller's gateway key is checked.

The key store (keys kept hashed, with limits) plugs in here by providing `IAuthenticator`;
until one is configured the gateway is open, as the foundation has always been.
"""

from __future__ import annotations

import attrs
from zope.interface import Interface, implementer


@attrs.frozen
class Principal:
    """An authenticated caller.  ``key_id`` names the key without revealing it."""

    key_id: str | None = None


class IAuthenticator(Interface):
    def authenticate(key: str | None) -> Principal | None:  # noqa: N805 (zope interface)
        """The caller behind ``key`` (None when none was sent), or None to refuse it."""


@implementer(IAuthenticator)
class OpenGate:
    """No keys configured: every caller is let in, anonymously."""

    def authenticate(self, key: str | None) -> Principal | None:
        return Principal()
