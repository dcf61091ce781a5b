"""Finds provider plugins with Twisted's plugin system."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from twisted.plugin import getPlugins

from txgateway.providers import IProviderPlugin


class PluginConflict(Exception):
    """Two different plugins claim the same name."""


def add_plugin_dirs(directories: Iterable[str]) -> None:
    """
    Make modules in ``directories`` part of the ``txgateway.plugins`` package.

    The package's ``__path__`` is process-wide, as Twisted's own plugin packages are; a
    directory is added once.
    """
    import txgateway.plugins as package

    for directory in directories:
        directory = os.path.abspath(directory)
        if directory not in package.__path__:
            package.__path__.append(directory)


def find_plugins(plugin_dirs: Iterable[str] = ()) -> Mapping[str, IProviderPlugin]:
    """Every installed provider plugin by name."""
    import txgateway.plugins as package

    add_plugin_dirs(plugin_dirs)
    found: dict[str, IProviderPlugin] = {}
    for plugin in getPlugins(IProviderPlugin, package):
        known = found.setdefault(plugin.name, plugin)
        # getPlugins also returns a plugin object that another module merely imported.
        if known is not plugin:
            raise PluginConflict(
                f"two provider plugins are named {plugin.name!r}: {known!r} and {plugin!r}"
            )
    return found
