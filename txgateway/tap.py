"""``twistd txgateway``: command-line options and the service they make."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
from twisted.application.service import IService
from twisted.python import usage

from txgateway.config import CONVERTER, ConfigError, GatewayConfig, Workers, read_config
from txgateway.providers.registry import find_plugins
from txgateway.workers import WorkerPool

if TYPE_CHECKING:
    from txgateway.service import GatewayService


class Options(usage.Options):
    synopsis = "--config PATH [--listen ENDPOINT]"
    longdesc = "An LLM API gateway: the OpenAI API in front of many providers."
    optParameters = [
        ["config", "c", None, "Path of the gateway's YAML config file."],
        ["listen", "l", None,
         "Twisted endpoint to listen on, overriding the config "
         "(e.g. tcp:4000:interface=127.0.0.1)."],
        ["workers", "w", None,
         "Worker processes serving the one socket: a number or auto, overriding the config."],
    ]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required (try twistd-config/gateway.yaml)")
        workers = self["workers"]
        if workers is not None:
            try:
                self["workers"] = CONVERTER.structure(workers, Workers)
            except Exception:
                raise usage.UsageError(
                    f"--workers takes a number of workers or auto, not {workers!r}") from None


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


def reading(path: str, listen: str | None = None) -> Callable[[], GatewayConfig]:
    """Reads the config at ``path`` afresh (for reloads); it raises `ConfigError`."""

    def config_source() -> GatewayConfig:
        config = read_config(path, find_plugins)
        return attrs.evolve(config, listen=listen) if listen else config

    return config_source


def gateway_service(path: str, listen: str | None = None) -> GatewayService:
    """
    The gateway serving the config at ``path`` as twistd runs it: it reloads the file on
    SIGHUP and ``POST /admin/reload``, and stops the process if it cannot start.
    """
    # Imported here: a parent of workers never serves, and the resource tree, Autobahn and
    # the realtime relay are 15 MiB it would hold for nothing.
    from txgateway.service import GatewayService

    service = GatewayService(gateway_config(path, listen), config_source=reading(path, listen))
    service.stop_reactor_on_failure = True
    service.reload_on_sighup()
    return service


def makeService(options: Options) -> IService:
    path, listen = options["config"], options["listen"]
    config = gateway_config(path, listen)
    workers = options["workers"] or config.workers
    if workers == 1:
        return gateway_service(path, listen)
    pool = WorkerPool(path, listen, workers, config)
    pool.reload_on_sighup()
    return pool
