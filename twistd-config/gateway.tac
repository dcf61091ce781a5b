"""
The gateway as a twistd application: ``twistd -ny twistd-config/gateway.tac``.

It serves the ``gateway.yaml`` beside this file, from any working directory.  Two
environment variables adjust it without editing the file: ``TXGATEWAY_CONFIG`` names
another config, and ``TXGATEWAY_LISTEN`` overrides the listen endpoint
(e.g. ``tcp:8080:interface=127.0.0.1``).
"""

import os

import attrs
from twisted.application import service

from txgateway.config import ConfigError, read_config
from txgateway.providers.registry import find_plugins
from txgateway.service import GatewayService

# twistd execs a .tac with __file__ set to the path it was given, before any --rundir
# chdir: resolve against it, not the working directory.
config_path = os.environ.get("TXGATEWAY_CONFIG") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "gateway.yaml"
)
try:
    config = read_config(config_path, find_plugins)
except ConfigError as error:
    # SystemExit, not a traceback: twistd prints the message and exits non-zero.
    problems = "\n  ".join(error.problems)
    raise SystemExit(f"txgateway: {config_path} is not a valid config:\n  {problems}")
if os.environ.get("TXGATEWAY_LISTEN"):
    config = attrs.evolve(config, listen=os.environ["TXGATEWAY_LISTEN"])

application = service.Application("txgateway")
GatewayService(config).setServiceParent(application)
