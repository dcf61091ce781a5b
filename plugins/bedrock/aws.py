"""
AWS credentials, SigV4 signing and the event-stream wire format for providers on AWS
(Bedrock), through botocore.

Credentials come from the config, or else from botocore's standard chain (environment,
shared credentials and config files with a profile, container and instance metadata).  The
chain may do network I/O, so it runs in the reactor's thread pool: once at build, again when
refreshable credentials near their expiry, and again after a failure; requests are signed
with the latest frozen credentials meanwhile and never wait on a lookup.

botocore's credential, session and signing modules (about 9 MB resident) are imported when a
Bedrock provider is first built or signs, not by every gateway that loads the plugins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from botocore.eventstream import EventStreamBuffer, EventStreamMessage, ParserError
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from txgateway.upstream import UpstreamError

if TYPE_CHECKING:
    from botocore.credentials import ReadOnlyCredentials

log = Logger()


class CredentialsUnavailable(UpstreamError):
    """No AWS credentials yet: the chain is still looking, or found none."""

    status = 503
    code = "upstream_credentials_unavailable"


class AwsCredentials:
    """The credentials requests are signed with: `frozen` never blocks."""

    def __init__(self, reactor: Any, access_key_id: str = "", secret_access_key: str = "",
                 session_token: str = "", profile: str = "") -> None:
        self._reactor = reactor
        self._profile = profile or None
        self._frozen: ReadOnlyCredentials | None = None
        #: botocore's refreshable credentials, when the chain gave some.
        self._refreshable: Any = None
        self._looking = False
        self._waiters: list[Deferred[None]] = []
        self._problem = "AWS credentials are still being looked up"
        if access_key_id:
            from botocore.credentials import ReadOnlyCredentials

            self._frozen = ReadOnlyCredentials(access_key_id, secret_access_key,
                                               session_token or None)
        else:
            self._look_up()

    def wait(self) -> Deferred[None] | None:
        """
        None when there are credentials to sign with; else a Deferred that fires when the
        lookup (started now, if none is under way) is over, whatever it found.
        """
        if self._frozen is not None:
            return None
        self._look_up()
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def frozen(self) -> ReadOnlyCredentials:
        """The current credentials; starts a lookup in the background when they near expiry."""
        frozen = self._frozen
        if frozen is None:
            self._look_up()
            raise CredentialsUnavailable(self._problem)
        refreshable = self._refreshable
        if refreshable is not None and refreshable.refresh_needed():
            self._look_up()
        return frozen

    def _look_up(self) -> None:
        if self._looking:
            return
        self._looking = True
        looking = deferToThreadPool(self._reactor, self._reactor.getThreadPool(),
                                    _resolve, self._refreshable, self._profile)
        looking.addCallbacks(self._found, self._failed)

    def _found(self, found: tuple[Any, ReadOnlyCredentials] | None) -> None:
        if found is None:
            self._problem = "no AWS credentials were found (config, environment, files, metadata)"
            log.error("AWS credentials: {problem}", problem=self._problem)
        else:
            credentials, self._frozen = found
            if hasattr(credentials, "refresh_needed"):
                self._refreshable = credentials
        self._over()

    def _failed(self, failure: Failure) -> None:
        self._problem = f"the AWS credentials lookup failed: {failure.value}"
        log.failure("AWS credentials lookup failed", failure)
        self._over()

    def _over(self) -> None:
        self._looking = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _resolve(refreshable: Any, profile: str | None) -> tuple[Any, ReadOnlyCredentials] | None:
    """
    In a thread: refresh ``refreshable``, or else run botocore's resolver chain as the AWS
    SDKs and CLI do; the credentials object and its frozen values, or None when none exist.
    """
    import botocore.session

    credentials = refreshable or botocore.session.Session(profile=profile).get_credentials()
    if credentials is None:
        return None
    return credentials, credentials.get_frozen_credentials()


def signed_headers(credentials: ReadOnlyCredentials, service: str, region: str, url: str,
                   headers: Mapping[str, str], body: bytes) -> Headers:
    """
    The headers of a SigV4-signed POST: ``headers``, ``x-amz-date``, ``authorization`` and
    (with temporary credentials) ``x-amz-security-token``, signed by botocore's `SigV4Auth`.
    The agent adds the same ``host`` botocore signed, derived from ``url`` alike.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
    SigV4Auth(credentials, service, region).add_auth(request)
    return Headers({name.encode(): [value.encode() if isinstance(value, str) else value]
                    for name, value in request.headers.items()})


class EventStreamCorrupt(ValueError):
    """
    An AWS event stream frame is malformed (a CRC mismatch, an impossible length);
    ``messages`` holds the good ones decoded before it in the same feed.
    """

    def __init__(self, problem: str, messages: list[EventStreamMessage]) -> None:
        super().__init__(problem)
        self.messages = messages


class AwsEventStreamDecoder:
    """
    Splits an AWS event stream (``application/vnd.amazon.eventstream``) into messages as the
    bytes arrive, however they were cut, several messages per chunk or one across many.

    botocore's `EventStreamBuffer` does the binary work: it decodes incrementally, checks the
    prelude and message CRC32s, bounds header and payload lengths, and reads every header
    type; each message has ``headers`` (a dict: ``:event-type``, ``:message-type`` ...) and
    ``payload`` (bytes).  After `EventStreamCorrupt` the stream cannot be resynchronised.
    """

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()

    def feed(self, data: bytes) -> list[EventStreamMessage]:
        """The messages completed by ``data``; `EventStreamCorrupt` at a malformed one."""
        self._buffer.add_data(data)
        messages = []
        try:
            messages.extend(self._buffer)
        except ParserError as error:
            raise EventStreamCorrupt(str(error), messages) from None
        return messages
