"""The listening socket's backlog: room for a burst of connections (`LISTEN_BACKLOG`)."""

from __future__ import annotations

import shutil
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from tests.gateway_harness import GatewayTestCase
from txgateway.config import LISTEN_BACKLOG, with_backlog
from txgateway.workers import reuse_port_sockets


def backlog_of(port: int) -> int:
    """The kernel's backlog of the socket listening on ``port`` (``ss``'s Send-Q)."""
    listed = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                            text=True, check=True).stdout.split()
    return int(listed[2])


class BacklogTests(SynchronousTestCase):
    def test_endpoints_get_the_gateways_backlog_unless_they_say(self) -> None:
        self.assertEqual(with_backlog("tcp:4000:interface=127.0.0.1"),
                         f"tcp:4000:interface=127.0.0.1:backlog={LISTEN_BACKLOG}")
        self.assertEqual(with_backlog("unix:/run/gw.sock"),
                         f"unix:/run/gw.sock:backlog={LISTEN_BACKLOG}")
        self.assertEqual(with_backlog("tcp:4000:backlog=7"), "tcp:4000:backlog=7")
        self.assertEqual(with_backlog("ssl:443:privateKey=k.pem"), "ssl:443:privateKey=k.pem")

    def test_worker_sockets_listen_with_it(self) -> None:
        if shutil.which("ss") is None:
            self.skipTest("ss (iproute2) reads a socket's backlog")
        sockets = reuse_port_sockets(with_backlog("tcp:0:interface=127.0.0.1"), 2)
        for listening in sockets:
            self.addCleanup(listening.close)
        self.assertEqual(backlog_of(sockets[0].getsockname()[1]), LISTEN_BACKLOG)


class ServiceBacklogTests(GatewayTestCase):
    def test_the_gateway_listens_with_it(self) -> None:
        if shutil.which("ss") is None:
            self.skipTest("ss (iproute2) reads a socket's backlog")
        self.assertEqual(backlog_of(int(self.base_url.rsplit(":", 1)[1])), LISTEN_BACKLOG)
