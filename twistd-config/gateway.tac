"""
The gateway as a twistd application: ``twistd -ny twistd-config/gateway.tac``.

It serves the ``gateway.yaml`` beside this file, from any working directory.  Two
environment variables adjust it without editing the file: ``TXGATEWAY_CONFIG`` names
another config, and ``TXGATEWAY_LISTEN`` overrides the listen endpoint
(e.g. ``tcp:8080:interface=127.0.0.1``).
"""

import os

from twisted.application import service

from txgateway.tap import gateway_service

# twistd execs a .tac with __file__ set to the path it was given, before any --rundir
# chdir: resolve against it, not the working directory.
config_path = os.environ.get("TXGATEWAY_CONFIG") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "gateway.yaml"
)
application = service.Application("txgateway")
gateway_service(config_path, os.environ.get("TXGATEWAY_LISTEN")).setServiceParent(application)
