"""
Provider plugins shipped with txgateway; this directory is installed as ``txgateway.plugins``.

The gateway finds providers here with ``twisted.plugin.getPlugins``.  Like ``twisted.plugins``,
the package spans every ``txgateway/plugins`` directory on ``sys.path``, so a distribution that
ships ``txgateway/plugins/<name>.py`` (without an ``__init__.py``) adds providers by being
installed, and directories named in ``plugin_dirs`` are appended at start.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))  # noqa: F821 (set by the import system)
__all__: list[str] = []
