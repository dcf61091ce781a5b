"""
Request bodies sent upstream as they arrive (multipart uploads: audio transcriptions and
translations, image edits, files), rather than held whole before the call starts.

A resource opts in with a true ``streams_upload`` attribute: the site (`txgateway.web.site`)
then renders its POSTs as soon as their headers are in, with ``request.upload`` an `Upload`
that the body's chunks are fed to as they come.  The resource may `Upload.watch` the body
(a parser looking for what routes the call), then hands `Upload.producer` to the agent as the
upstream request's body:

- before a producer starts, the chunks are held (so a call that failed to connect can fall
  back and replay them); past `Upload.hold` bytes the client is paused, unless a watcher
  still needs to read ahead (`Upload.read_ahead`); the site's ``max_body_bytes`` bounds it;
- once started, each chunk is written upstream when it arrives, and the upstream connection's
  backpressure pauses and resumes reading from the client;
- with a Content-Length, the last chunk is written only once the body has ended and its
  watcher found it whole: an upstream never gets a complete body the gateway refused;
- an upload is sent once: the producer that started owns the body, so only a failure before
  the first byte went out (no connection) may be tried elsewhere;
- a watcher may rewrite the body on its way (`Upload.rewrite`, the files API's batch input):
  what goes upstream is then what it `Upload.emit`s as it reads, held and paced the same
  way, sent chunked (its length is unknown), and ended only once the watcher found the body
  whole;
- a body over the limit fails the upload with a 413 `Refusal`, a watcher's `BadRequest`
  with a 400 one, a client that leaves with `CancelledError`: the upstream request fails
  with that error (its connection aborted);
- when the upstream stops taking the body (it failed, or answered early) or the resource
  answers before the body is all in, the rest of the body is read and dropped
  (`Upload.discard`), and the request finishes once it has ended, so the connection stays
  in step (or closes, past the limit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from txgateway.admission import Refusal
from txgateway.dialects.openai import BadRequest

Splice = tuple[int, int, bytes]
"""Bytes ``start:end`` of the body replaced by the third item (a rewritten field)."""


class BodyWatcher(Protocol):
    """What reads an upload as it arrives, from its first byte, besides its producer."""

    def received(self, data: bytes) -> None:
        """A chunk; raising `BadRequest` (or a `Refusal`) fails the upload."""

    def ended(self) -> None:
        """The body is all in; raising fails the upload (before its last bytes went out)."""

    def failed(self, error: Exception) -> None:
        """The upload failed (client gone, over the limit, or the watcher's own error)."""


def paths_of(root: Any, wanted: Callable[[Any], bool], depth: int = 6) -> frozenset[bytes]:
    """The paths under ``root`` (static children only) of the resources ``wanted``."""
    found = set()
    level = [(b"", root)]
    for _ in range(depth):
        below = []
        for path, resource in level:
            for name, child in getattr(resource, "children", {}).items():
                child_path = path + b"/" + name
                if wanted(child):
                    found.add(child_path)
                below.append((child_path, child))
        level = below
    return frozenset(found)


def streamed_paths(root: Any) -> frozenset[bytes]:
    """The paths under ``root`` of resources that stream uploads."""
    return paths_of(root, lambda resource: getattr(resource, "streams_upload", False))


class Upload:
    """
    A request body as it arrives: fed by the site (`feed`, `end`, `fail`), read by the
    resource (`watch`, `producer`, `discard`).  ``length`` is the Content-Length (None when
    chunked); ``received`` counts the bytes so far.
    """

    #: Bytes held for a producer not started yet before the client is paused.
    hold = 256 * 1024

    def __init__(self, transport: Any, length: int | None) -> None:
        self.length = length
        self.received = 0
        self.complete = False
        self.failure: Exception | None = None
        self._transport = transport  # the client's, paused and resumed; None for `whole`
        self._held: list[bytes] = []
        self._held_size = 0
        self._final: bytes | None = None  # a Content-Length body's last chunk, until `end`
        self._watcher: BodyWatcher | None = None
        self._producer: UploadProducer | None = None
        self._read_ahead = False
        self._rewritten = False  # what goes upstream is what the watcher emits
        self._dropping = False
        self._upstream_paused = False
        self._paused = False

    @classmethod
    def whole(cls, body: bytes) -> Upload:
        """A body the site has already read whole (a request it did not stream)."""
        upload = cls(None, len(body))
        if body:
            upload.feed(body)
        upload.end()
        return upload

    # The site's side.

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        if self._dropping or self.failure is not None:
            return
        if not self._rewritten:  # (else what goes upstream is what the watcher emits)
            if self.length is not None and self.received == self.length:
                self._final = data
            else:
                self._send(data)
        if self._watcher is not None:
            self._tell(self._watcher.received, data)
        self._steer()

    def end(self) -> None:
        """The body is all in."""
        if self._watcher is not None and self.failure is None and not self._dropping:
            self._tell(self._watcher.ended)
        self.complete = True
        if self._paused:  # a pause that caught the last chunk: the channel reads on
            self._paused = False
            self._transport.resumeProducing()
        if self.failure is not None or self._dropping:
            return
        final, self._final = self._final, None
        if final is not None:
            self._send(final)
        if self._producer is not None:
            self._producer.finished()

    def fail(self, error: Exception) -> None:
        """The body will not be whole: ``error`` is what the upstream call fails with."""
        if self.failure is not None:
            return
        self.failure = error
        self._held, self._held_size, self._final = [], 0, None
        self._steer()
        if self._producer is not None:
            self._producer.failed(error)
        if self._watcher is not None:
            self._watcher.failed(error)

    def too_large(self, limit: int) -> None:
        """The body went over the site's limit (which drops the rest of it)."""
        self.fail(Refusal(413, f"the request body exceeds the limit of {limit} bytes",
                          "request_too_large"))

    # The resource's side.

    def watch(self, watcher: BodyWatcher) -> None:
        """Show ``watcher`` the body from its first byte (what came so far at once)."""
        assert self._producer is None, "watch an upload before it is sent"
        self._watcher = watcher
        for data in self._held + ([self._final] if self._final is not None else []):
            if self.failure is None:
                self._tell(watcher.received, data)
        if self.failure is not None:
            watcher.failed(self.failure)
        elif self.complete:
            self._tell(watcher.ended)

    def rewrite(self, kept: int) -> None:
        """
        From here the watcher rewrites the body on its way upstream: its first ``kept`` bytes
        go as they came, then only what the watcher `emit`s.  Called by the watcher (which has
        read every byte so far), before any producer.
        """
        assert self._watcher is not None and self._producer is None, "rewrite while watching"
        assert not self._rewritten, "rewrite once"
        self._rewritten = True
        if self.failure is None and not self._dropping:
            body = b"".join(self._held + ([self._final] if self._final is not None else []))
            assert kept <= len(body), "the kept bytes must have arrived"
            self._held, self._held_size, self._final = [body[:kept]], kept, None

    def emit(self, data: bytes) -> None:
        """The next piece of a rewritten body: written upstream, or held until a producer
        starts."""
        assert self._rewritten, "emit after rewrite"
        if data and self.failure is None and not self._dropping:
            self._send(data)

    def read_ahead(self, wanted: bool) -> None:
        """Whether the client is read on though no producer has started (a watcher needs
        more of the body to route the call); ``max_body_bytes`` still bounds it."""
        self._read_ahead = wanted
        self._steer()

    def producer(self, splice: Splice | None = None,
                 on_start: Callable[[], None] | None = None) -> UploadProducer:
        """
        The upstream request's body: the upload from its first byte, ``splice`` applied (its
        bytes must have arrived: a watcher has seen them).  ``on_start`` is called when the
        first bytes go out, after which the upload cannot be sent again.  Raises the
        upload's failure if it has failed.  A rewritten body has no known length.
        """
        if self.failure is not None:
            raise self.failure
        if self._producer is not None or self._dropping:
            raise RuntimeError("an upload is sent once")
        assert splice is None or not self._rewritten, "splice a body not rewritten"
        if self.length is None or self._rewritten:
            return UploadProducer(self, UNKNOWN_LENGTH, splice, on_start)
        length = self.length
        if splice is not None:
            length += len(splice[2]) - (splice[1] - splice[0])
        return UploadProducer(self, length, splice, on_start)

    def discard(self) -> None:
        """Read and drop the rest of the body: nothing will send it."""
        if not self._dropping:
            self._dropping = True
            self._held, self._held_size, self._final = [], 0, None
            self._steer()

    # For the producer.

    def _start(self, producer: UploadProducer, splice: Splice | None) -> None:
        if self._producer is not None or self._dropping:
            raise RuntimeError("an upload is sent once")
        self._producer = producer
        held = b"".join(self._held)
        self._held, self._held_size = [], 0
        pieces = [held]
        if splice is not None:
            start, end, replacement = splice
            if end <= len(held):
                pieces = [held[:start], replacement, held[end:]]
            else:
                # The splice reaches into the last chunk, which waits for the body's end
                # (`end`): so does everything from the splice on.
                assert self._final is not None, "a splice must be in the bytes received"
                body = held + self._final
                assert end <= len(body), "a splice must be in the bytes received"
                cut = min(start, len(held))
                pieces = [body[:cut]]
                self._final = body[cut:start] + replacement + body[end:]
        for piece in pieces:
            if piece:
                producer.write(piece)
        self._steer()
        if self.complete:
            producer.finished()

    def _send(self, data: bytes) -> None:
        """Bytes to go upstream: written, or held until the producer starts."""
        if self._producer is not None:
            self._producer.write(data)
        else:
            self._held.append(data)
            self._held_size += len(data)

    def _upstream_pause(self, paused: bool) -> None:
        self._upstream_paused = paused
        self._steer()

    def _tell(self, method: Callable[..., None], *args: Any) -> None:
        try:
            method(*args)
        except BadRequest as error:
            self.fail(Refusal(400, str(error), None, error.param))
        except (Refusal, CancelledError) as error:
            self.fail(error)

    def _steer(self) -> None:
        """Pause the client while nothing may take more of its body; resume it after."""
        if self._transport is None or self.complete:
            return
        if self._dropping or self.failure is not None:
            paused = False
        elif self._producer is not None:
            paused = self._upstream_paused
        else:
            paused = not self._read_ahead and self._held_size > self.hold
        if paused != self._paused:
            self._paused = paused
            if paused:
                self._transport.pauseProducing()
            else:
                self._transport.resumeProducing()


@implementer(IBodyProducer)
class UploadProducer:
    """
    An `Upload` as the body of an upstream request (``IBodyProducer``): what has arrived is
    written when the agent starts it, the rest as it comes; the upstream's backpressure
    pauses the client.  ``length`` is exact when the client sent a Content-Length.
    """

    def __init__(self, upload: Upload, length: Any, splice: Splice | None,
                 on_start: Callable[[], None] | None) -> None:
        self.length = length
        self._upload = upload
        self._splice = splice
        self._on_start = on_start
        self._consumer: Any = None
        self._done: Deferred[None] | None = None
        self._stopped = False

    def startProducing(self, consumer: Any) -> Deferred[None]:
        upload = self._upload
        if upload.failure is not None:
            return fail(upload.failure)
        self._consumer = consumer
        self._done = Deferred(lambda _: self.stopProducing())
        if self._on_start is not None:
            self._on_start()
        upload._start(self, self._splice)
        return self._done

    def write(self, data: bytes) -> None:
        if not self._stopped:
            self._consumer.write(data)

    def finished(self) -> None:
        if not self._stopped and self._done is not None and not self._done.called:
            self._done.callback(None)

    def failed(self, error: Exception) -> None:
        if not self._stopped and self._done is not None and not self._done.called:
            self._stopped = True
            self._done.errback(error)

    def pauseProducing(self) -> None:
        self._upload._upstream_pause(True)

    def resumeProducing(self) -> None:
        self._upload._upstream_pause(False)

    def stopProducing(self) -> None:
        """The upstream will take no more (it failed, answered, or the call was cancelled)."""
        if not self._stopped:
            self._stopped = True
            self._upload.discard()
