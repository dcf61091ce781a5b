"""Provider plugins: found with getPlugins, dropped into a directory, or installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

from twisted.internet import reactor
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import providedBy
from zope.interface.verify import verifyObject

from txgateway.config import load_config
from txgateway.providers import IProvider, IProviderPlugin, ProviderContext
from txgateway.providers.registry import find_plugins
from txgateway.routing import Router

#: A provider written in the test, as a user would write one: an OpenAI-compatible server
#: under another name, with settings of its own.
DROPPED_PROVIDER = '''
import attrs
from twisted.plugin import IPlugin
from zope.interface import implementer

from txgateway.plugins.openai_provider import OpenAIProvider, OpenAISettings
from txgateway.providers import IProviderPlugin


@attrs.frozen
class AcmeSettings:
    region: str


@implementer(IPlugin, IProviderPlugin)
class AcmePlugin:
    name = "{name}"
    settings_type = AcmeSettings

    def build(self, name, settings, context):
        base_url = "http://" + settings.region + ".acme.invalid/v1"
        return OpenAIProvider(name, OpenAISettings(base_url=base_url), context)


acme = AcmePlugin()
'''


#: Settings without a default, for the shipped plugins that have some.
REQUIRED_SETTINGS = {"azure": {"endpoint": "https://x.openai.azure.com"},
                     "vertex": {"project": "p"},
                     # Static keys: the AWS credential chain would look around in a thread.
                     "bedrock": {"region": "us-east-1", "access_key_id": "AKID"},
                     **{name: {"api_key": "k"} for name in (
                         "cohere", "groq", "together", "mistral", "deepseek", "xai",
                         "openrouter", "fireworks")}}


class ShippedPluginTests(SynchronousTestCase):
    def test_found_and_complete(self) -> None:
        plugins = find_plugins()
        self.assertTrue({"openai", "demo", "azure"} <= set(plugins))
        context = ProviderContext(reactor=reactor, http_agent=object())
        for name, plugin in plugins.items():
            verifyObject(IProviderPlugin, plugin)
            settings = plugin.settings_type(**REQUIRED_SETTINGS.get(name, {}))
            provider = plugin.build("x", settings, context)
            verifyObject(IProvider, provider)
            for interface in providedBy(provider):  # every hook it declares, as declared
                verifyObject(interface, provider)


class DroppedPluginTests(TestCase):
    def temporary_directory(self) -> str:
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        return directory

    def test_plugin_dir(self) -> None:
        """A module in a ``plugin_dirs`` directory is a provider plugin, core untouched."""
        directory = self.temporary_directory()
        with open(os.path.join(directory, "acme_provider.py"), "w") as module:
            module.write(DROPPED_PROVIDER.format(name="acme"))
        config = load_config(textwrap.dedent(f"""
            plugin_dirs: [{os.path.abspath(directory)}]
            providers: {{a: {{plugin: acme, region: eu}}}}
            models: [{{name: m, provider: a}}]
        """), find_plugins, {})
        plugins = find_plugins(config.plugin_dirs)
        provider = plugins["acme"].build(
            "a", config.providers["a"].settings,
            ProviderContext(reactor=reactor, http_agent=object()))
        target = Router(config.models, {"a": provider}).resolve("m")
        self.assertEqual(target.provider.name, "a")
        self.assertEqual(provider._urls["chat"], b"http://eu.acme.invalid/v1/chat/completions")

    def test_installed_distribution(self) -> None:
        """
        A distribution that installs ``txgateway/plugins/<name>.py`` (no ``__init__.py``, as
        with ``twisted/plugins``) adds a provider by being on ``sys.path``.
        """
        site = self.temporary_directory()
        os.makedirs(os.path.join(site, "txgateway", "plugins"))
        with open(os.path.join(site, "txgateway", "plugins", "zeta_provider.py"), "w") as f:
            f.write(DROPPED_PROVIDER.format(name="zeta"))
        found = subprocess.run(
            [sys.executable, "-c", "from txgateway.providers.registry import find_plugins;"
                                   "print(' '.join(sorted(find_plugins())))"],
            env={**os.environ, "PYTHONPATH": os.path.abspath(site)},
            capture_output=True, text=True, check=True, cwd=site,
        )
        self.assertEqual(found.stdout.split(), sorted({*find_plugins(), "zeta"}))
