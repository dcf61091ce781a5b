"""Loading the YAML config: env expansion, strict types, path-named errors."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from txgateway.config import ConfigError, expand_environment, load_config, read_config
from txgateway.providers.registry import find_plugins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def problems(text: str, environ: dict | None = None) -> list[str]:
    try:
        load_config(text, find_plugins, environ or {})
    except ConfigError as error:
        return error.problems
    raise AssertionError("the config loaded")


class ExpansionTests(SynchronousTestCase):
    def test_forms(self) -> None:
        environ = {"SET": "x", "EMPTY": ""}
        self.assertEqual(expand_environment("a${SET}b", environ), "axb")
        self.assertEqual(expand_environment("${NOPE:-dflt}", environ), "dflt")
        self.assertEqual(expand_environment("${EMPTY:-dflt}", environ), "dflt")
        self.assertEqual(expand_environment("${SET:+yes}/${NOPE:+yes}", environ), "yes/")
        self.assertEqual(expand_environment({"a": ["${SET}", 5]}, environ), {"a": ["x", 5]})

    def test_value_cannot_change_structure(self) -> None:
        """A variable's value is text, never YAML: it cannot add keys or lists."""
        config = load_config(
            "providers: {d: {plugin: demo, reply: '${R}'}}\nmodels: [{name: m, provider: d}]",
            find_plugins, {"R": "x\nbogus: 1"})
        self.assertEqual(config.providers["d"].settings.reply, "x\nbogus: 1")

    def test_unset_variable_names_its_path(self) -> None:
        self.assertEqual(
            problems("providers: {o: {plugin: openai, api_key: '${KEY}'}}\nmodels: []"),
            ["providers.o.api_key: environment variable KEY is not set"])


class StrictLoadingTests(SynchronousTestCase):
    def test_errors_name_their_paths(self) -> None:
        found = problems("""
listen: 5
bogus: 1
max_body_bytes: 1.5
upstream: {connect_timeout: 0, idle_timeout: soon}
providers:
  openai: {plugin: openai, base_url: not-a-url, extra: 1, headers: {a: 1}}
  ghost: {plugin: no-such-plugin}
models:
  - {name: m, provider: nobody}
  - {nam: typo}
""")
        self.assertEqual(sorted(found), sorted([
            "listen: expected a string",
            "bogus: unknown key",
            "max_body_bytes: expected an integer",
            "upstream.connect_timeout: expected a positive number of seconds",
            "upstream.idle_timeout: expected a number of seconds",
            "models[1].name: required",
            "models[1].nam: unknown key",
        ]))
        found = problems("""
providers:
  openai: {plugin: openai, base_url: not-a-url, extra: 1, headers: {a: 1}}
  ghost: {plugin: no-such-plugin}
models:
  - {name: m, provider: nobody}
  - {name: n, provider: ghost}
""")
        self.assertEqual(sorted(found), sorted([
            "providers.openai.base_url: expected a URL",
            "providers.openai.extra: unknown key",
            "providers.openai.headers.a: expected a string",
            "providers.ghost.plugin: no provider plugin named 'no-such-plugin' is installed",
            "models[0].provider: no provider named 'nobody'",
        ]))

    def test_routes_keys_and_prices(self) -> None:
        found = problems("""
providers: {d: {plugin: demo}}
models:
  - {name: a}
  - {name: b, provider: d, targets: [{provider: d}]}
  - {name: c, targets: [{provider: d, weight: -1}, {provider: gone}]}
keys:
  - {name: k}
  - {name: l, key: x, hash: y, budget_period: week}
prices:
  m: {input: cheap}
""")
        self.assertEqual(sorted(found), sorted([
            "models[2].targets[0].weight: expected a number of at least 0",
            "keys[1].budget_period: expected one of 'day', 'month', 'total'",
            "prices.m.input: expected a number",
        ]))
        found = problems("""
providers: {d: {plugin: demo}}
models:
  - {name: a}
  - {name: b, provider: d, targets: [{provider: d}]}
  - {name: c, targets: [{provider: d}, {provider: gone}]}
keys:
  - {name: k}
""")
        self.assertEqual(sorted(found), sorted([
            "models[0]: give either provider or targets",
            "models[1]: give either provider or targets",
            "models[2].targets[1].provider: no provider named 'gone'",
            "keys[0]: give either key or hash",
        ]))

    def test_disabled_providers_leave_their_targets(self) -> None:
        config = load_config("""
providers: {d: {plugin: demo}, spare: {plugin: demo, enabled: false}}
models:
  - {name: a, targets: [{provider: spare}, {provider: d, model: x}]}
  - {name: b, targets: [{provider: spare}]}
""", find_plugins, {})
        [route] = config.models
        self.assertEqual([(t.provider, t.model) for t in route.targets], [("d", "x")])

    def test_choice(self) -> None:
        self.assertEqual(
            problems("providers: {a: {plugin: azure, endpoint: 'https://x.example', api: v2}}\n"
                     "models: [{name: m, provider: a}]"),
            ["providers.a.api: expected one of 'v1', 'deployments'"])

    def test_not_yaml(self) -> None:
        [problem] = problems("providers: [unclosed")
        self.assertTrue(problem.startswith("$: not valid YAML"))

    def test_strings_from_the_environment_become_numbers(self) -> None:
        config = load_config("""
max_body_bytes: ${LIMIT}
upstream: {idle_timeout: "${IDLE}"}
providers: {d: {plugin: demo}}
models: [{name: m, provider: d}]
""", find_plugins, {"LIMIT": "1024", "IDLE": "2.5"})
        self.assertEqual((config.max_body_bytes, config.upstream.idle_timeout), (1024, 2.5))


class ShippedConfigTests(SynchronousTestCase):
    path = os.path.join(ROOT, "twistd-config", "gateway.yaml")

    def test_without_a_key_only_demo(self) -> None:
        config = read_config(self.path, find_plugins, {})
        self.assertEqual(list(config.providers), ["demo"])
        self.assertEqual([route.name for route in config.models], ["demo"])
        self.assertEqual(config.listen, "tcp:4000:interface=127.0.0.1")

    def test_with_a_key_openai_too(self) -> None:
        config = read_config(self.path, find_plugins, {"OPENAI_API_KEY": "sk-x"})
        self.assertEqual(sorted(config.providers), ["demo", "openai"])
        self.assertEqual(config.providers["openai"].settings.api_key, "sk-x")
        self.assertIn("gpt-*", [route.name for route in config.models])
