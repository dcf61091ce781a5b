"""
Google OAuth access tokens minted from a service account, without blocking the reactor.

The JWT bearer grant (RFC 7523) is one signed assertion POSTed to the account's ``token_uri``:
signed here with ``cryptography`` and sent through the gateway's own agent, so minting is as
non-blocking, cancellable and testable (against a fake token endpoint) as any upstream call,
where ``google-auth`` would need a thread and the ``requests`` stack.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode

import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss

from txgateway.dialects.openai import loads_object
from txgateway.providers import json_request_headers
from txgateway.upstream import BytesProducer, UpstreamError

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
#: How long before its expiry a token is replaced.
REFRESH_MARGIN = 300.0
#: How long a minted assertion is valid (Google's maximum).
ASSERTION_LIFETIME = 3600
#: How long the token endpoint may take to answer.
MINT_TIMEOUT = 10.0


class TokenError(UpstreamError):
    """No access token could be had: the caller gets a 502 that says why."""

    code = "upstream_credentials"


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class ServiceAccountTokens:
    """
    Access tokens for one service account: cached, replaced `REFRESH_MARGIN` seconds before
    they expire, and minted once at a time (concurrent callers wait for the same mint).
    """

    def __init__(self, reactor: Any, agent: Any, account: dict[str, Any],
                 scope: str = CLOUD_PLATFORM) -> None:
        try:
            self._email = account["client_email"]
            self._token_uri = account.get("token_uri") or "https://oauth2.googleapis.com/token"
            self._key_id = account.get("private_key_id")
            key = serialization.load_pem_private_key(account["private_key"].encode(),
                                                      password=None)
            if not isinstance(key, rsa.RSAPrivateKey):  # Google signs with RS256 only
                raise ValueError("the private key is not an RSA key")
            self._key = key
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a service account key: {error}") from None
        self._reactor = reactor
        self._agent = agent
        self._scope = scope
        self._token: str | None = None
        self._expires = 0.0
        self._waiting: list[Deferred[str]] | None = None
        self._headers = json_request_headers({})
        self._headers.setRawHeaders(b"content-type", [b"application/x-www-form-urlencoded"])

    @property
    def current(self) -> str | None:
        """The cached token, when it is still good."""
        if self._token is not None and self._reactor.seconds() < self._expires - REFRESH_MARGIN:
            return self._token
        return None

    def token(self) -> Deferred[str]:
        """A good token: the cached one, or the next one minted."""
        token = self.current
        if token is not None:
            return succeed(token)
        waiter: Deferred[str] = Deferred()
        if self._waiting is None:
            self._waiting = [waiter]
            Deferred.fromCoroutine(self._mint())
        else:
            self._waiting.append(waiter)
        return waiter

    def assertion(self, now: float) -> bytes:
        """The signed JWT that asks for a token."""
        header = {"alg": "RS256", "typ": "JWT"}
        if self._key_id:
            header["kid"] = self._key_id
        claims = {"iss": self._email, "scope": self._scope, "aud": self._token_uri,
                  "iat": int(now), "exp": int(now) + ASSERTION_LIFETIME}
        signed = _b64(orjson.dumps(header)) + b"." + _b64(orjson.dumps(claims))
        signature = self._key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
        return signed + b"." + _b64(signature)

    async def _mint(self) -> None:
        now = self._reactor.seconds()
        try:
            token, lifetime = await self._ask(now)
        except Exception as error:
            if isinstance(error, CancelledError):
                error = TokenError("the token endpoint did not answer in time")
            elif not isinstance(error, TokenError):
                error = TokenError(f"could not reach the token endpoint: {error!r}")
            waiting, self._waiting = self._waiting or [], None
            for waiter in waiting:
                waiter.errback(error)
            return
        self._token, self._expires = token, now + lifetime
        waiting, self._waiting = self._waiting or [], None
        for waiter in waiting:
            waiter.callback(token)

    async def _ask(self, now: float) -> tuple[str, float]:
        form = urlencode({"grant_type": GRANT_TYPE,
                          "assertion": self.assertion(now).decode()}).encode()
        sending = self._agent.request(b"POST", self._token_uri.encode(), self._headers,
                                      BytesProducer(form))
        body_reader = _Body()

        def expire() -> None:
            if body_reader.transport is None:
                sending.cancel()
            else:
                body_reader.transport.stopProducing()

        timer = self._reactor.callLater(MINT_TIMEOUT, expire)
        try:
            response = await sending
            response.deliverBody(body_reader)
            body = await body_reader.done
        finally:
            if timer.active():
                timer.cancel()
        answer = loads_object(body) or {}
        if response.code != 200 or not isinstance(answer.get("access_token"), str):
            reason = (f"{answer.get('error', '')}: {answer.get('error_description', '')}"
                      if answer.get("error")
                      else body[:200].decode("utf-8", "replace"))
            raise TokenError(f"the token endpoint refused the service account "
                             f"({response.code}): {reason}")
        return answer["access_token"], float(answer.get("expires_in", ASSERTION_LIFETIME))


class _Body(Protocol):
    """Collects the token endpoint's (small) answer; its transport is stopped on a timeout."""

    transport: Any = None

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self._parts.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self._parts))
        else:
            self.done.errback(TokenError("the token endpoint's answer broke off"))
