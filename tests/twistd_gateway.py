"""A gateway run by ``twistd`` in a subprocess, on a loopback port the OS chose."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

#: A single process says ``serving on 127.0.0.1:PORT``; a parent of workers names the address.
SERVING = re.compile(rb"serving on \(?'?[\d.]+'?(?::|, )(\d+)")


class TwistdGateway:
    """``twistd -n txgateway --config PATH``, its log in ``directory``; `port` once serving."""

    def __init__(self, config_path: str, directory: str) -> None:
        self.log_path = os.path.join(directory, "twistd.log")
        self._offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
             os.environ.get("PYTHONPATH", "")])}
        self.process = subprocess.Popen(
            [twistd, "-n", "--pidfile=", f"--logfile={self.log_path}", "txgateway",
             "--config", config_path], cwd=directory, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = self._wait_for_port()

    def _wait_for_port(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"twistd exited with {self.process.returncode}:\n"
                                   + self.log())
            found = SERVING.search(self.log().encode())
            if found:
                return int(found.group(1))
            time.sleep(0.05)
        self.kill()
        raise RuntimeError("the gateway did not start:\n" + self.log())

    def log(self) -> str:
        """The log this run wrote."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._offset)
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """``kill -9``: no cleanup of any kind runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self, timeout: float = 30.0) -> int:
        """A clean stop (SIGTERM), as an orchestrator does; the exit status."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)
