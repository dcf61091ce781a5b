"""``twistd txgateway``: command-line options and the service they make."""

from __future__ import annotations

import attrs
from twisted.python import usage

from txgateway.config import ConfigError, GatewayConfig, read_config
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


def gateway_config(path: str, listen: str | None = None) -> GatewayConfig:
    """
    The config at ``path`` (``listen`` overriding its endpoint), or exit listing its problems:
    SystemExit, not a traceback, so twistd prints the message and exits non-zero.
    """
    try:
        config = read_config(path, find_plugins)
    except ConfigError as error:
        problems = "\n  ".join(error.problems)
        raise SystemExit(f"txgateway: {path} is not a valid config:\n  {problems}")
    return attrs.evolve(config, listen=listen) if listen else config


def gateway_service(path: str, listen: str | None = None) -> GatewayService:
    """
    The gateway serving the config at ``path`` as twistd runs it: it reloads the file on
    SIGHUP and ``POST /admin/reload``, and stops the process if it cannot start.
    """

    def config_source() -> GatewayConfig:
        config = read_config(path, find_plugins)
        return attrs.evolve(config, listen=listen) if listen else config

    service = GatewayService(gateway_config(path, listen), config_source=config_source)
    service.stop_reactor_on_failure = True
    service.reload_on_sighup()
    return service


def makeService(options: Options) -> GatewayService:
    return gateway_service(options["config"], options["listen"])
