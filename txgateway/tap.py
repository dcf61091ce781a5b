"""``twistd txgateway``: command-line options and the service they make."""

from __future__ import annotations

import attrs
from twisted.python import usage

from txgateway.config import ConfigError, read_config
from txgateway.providers.registry import find_plugins
from txgateway.service import GatewayService


class Options(usage.Options):
    synopsis = "--config PATH [--listen ENDPOINT]"
    longdesc = "An LLM API gateway: the OpenAI API in front of many providers."
    optParameters = [
        ["config", "c", None, "Path of the gateway's YAML config file."],
        ["listen", "l", None,
         "Twisted endpoint to listen on, overriding the config "
         "(e.g. tcp:4000:interface=127.0.0.1)."],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required (try twistd-config/gateway.yaml)")


def makeService(options: Options) -> GatewayService:
    try:
        config = read_config(options["config"], find_plugins)
    except ConfigError as error:
        problems = "\n  ".join(error.problems)
        raise SystemExit(f"txgateway: {options['config']} is not a valid config:\n  {problems}")
    if options["listen"]:
        config = attrs.evolve(config, listen=options["listen"])
    return GatewayService(config)
