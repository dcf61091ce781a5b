"""The epoll reactor's lean poll (`txgateway.polling`), on a reactor of its own."""

from __future__ import annotations

import socket

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from txgateway.polling import poll_without_log_context


class Reader:
    """A descriptor reading one end of a socket pair; it raises once told to."""

    def __init__(self, sock: socket.socket, fail: bool = False) -> None:
        self.sock, self.fail, self.read = sock, fail, []

    def fileno(self) -> int:
        return self.sock.fileno()

    def logPrefix(self) -> str:  # noqa: N802 (Twisted's name)
        return "reader"

    def doRead(self) -> None:  # noqa: N802
        self.read.append(self.sock.recv(100))
        if self.fail:
            raise RuntimeError("boom")

    def connectionLost(self, reason: object) -> None:  # noqa: N802
        self.lost = reason


class LeanPollTests(SynchronousTestCase):
    def reactor(self) -> EPollReactor:
        reactor = EPollReactor()
        self.addCleanup(reactor._poller.close)
        self.assertTrue(poll_without_log_context(reactor))
        return reactor

    def pair(self) -> tuple[socket.socket, socket.socket]:
        ours, theirs = socket.socketpair()
        self.addCleanup(ours.close)
        self.addCleanup(theirs.close)
        return ours, theirs

    def test_ready_descriptors_are_read(self) -> None:
        reactor = self.reactor()
        (a, a_peer), (b, b_peer) = self.pair(), self.pair()
        readers = [Reader(a), Reader(b)]
        for reader in readers:
            reactor.addReader(reader)
        a_peer.send(b"one")
        b_peer.send(b"two")
        reactor.doIteration(1.0)
        self.assertEqual([reader.read for reader in readers], [[b"one"], [b"two"]])
        reactor.doIteration(0)  # nothing more ready: nothing read
        self.assertEqual([reader.read for reader in readers], [[b"one"], [b"two"]])

    def test_a_failing_descriptor_is_disconnected_and_the_others_still_read(self) -> None:
        reactor = self.reactor()
        (a, a_peer), (b, b_peer) = self.pair(), self.pair()
        failing, fine = Reader(a, fail=True), Reader(b)
        reactor.addReader(failing)
        reactor.addReader(fine)
        a_peer.send(b"x")
        b_peer.send(b"y")
        reactor.doIteration(1.0)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(fine.read, [b"y"])
        self.assertIsInstance(failing.lost.value, RuntimeError)
        self.assertNotIn(failing, reactor.getReaders())

    def test_other_reactors_are_left_as_they_are(self) -> None:
        reactor = MemoryReactor()
        self.assertFalse(poll_without_log_context(reactor))
        self.assertNotIn("doIteration", vars(reactor))
