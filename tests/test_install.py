"""
Both ways of installing txgateway work from nothing: ``pip install .`` and ``pip install -e .``.

Each test builds a fresh venv, installs the project into it (dependencies from the package
index, through pip's cache), and runs the installed ``twistd`` from a directory outside the
repo, so nothing is found by accident on the working directory: the ``twistd txgateway``
subcommand comes from the installed ``twisted/plugins`` dropin, and the demo model answering
proves the provider plugins in ``txgateway.plugins`` were found.  Slow (pip installs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_twistd import CONFIG, REPO, Twistd, demo_chat, free_port, listen_on

pytestmark = pytest.mark.install

PIP_TIMEOUT = 600

# What a checkout may hold that is not the project: a non-editable install copies the rest.
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", "dropin.cache",
    ".ruff_cache", ".pytest_cache", "_trial_temp*", "twistd.pid", "twistd.log*",
)


def _clean_environ() -> dict[str, str]:
    """This process's environment less what would let the test venv see other code."""
    environ = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONUSERBASE"):
        environ.pop(name, None)
    environ["PYTHONNOUSERSITE"] = "1"
    return environ


def _run(argv: list[str], cwd: Path, timeout: float = 60) -> str:
    result = subprocess.run(argv, cwd=cwd, env=_clean_environ(), capture_output=True,
                            text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("editable", [False, True], ids=["pip-install", "pip-install-e"])
def test_install_from_nothing(tmp_path: Path, editable: bool) -> None:
    if editable:
        source = REPO
    else:
        # pip builds in the source tree (build/, *.egg-info): build in a copy instead.
        source = tmp_path / "source"
        shutil.copytree(REPO, source, symlinks=True, ignore=_NOT_SOURCE)
    outside = tmp_path / "run"
    outside.mkdir()

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=outside)
    python, twistd = str(venv / "bin" / "python"), str(venv / "bin" / "twistd")
    _run([python, "-m", "pip", "install", "--disable-pip-version-check", "-q",
          *(["-e"] if editable else []), str(source)], cwd=outside, timeout=PIP_TIMEOUT)

    # The installed code is the code that runs: the venv's copy, or the repo when editable.
    found = json.loads(_run([python, "-c", (
        "import json, txgateway, twisted.plugins.txgateway_dropin as dropin\n"
        "from txgateway.providers.registry import find_plugins\n"
        "print(json.dumps({'package': txgateway.__file__, 'dropin': dropin.__file__,\n"
        "                  'plugins': sorted(find_plugins())}))"
    )], cwd=outside))
    home = REPO if editable else venv.resolve()
    assert Path(found["package"]).resolve().is_relative_to(home), found
    assert Path(found["dropin"]).resolve().is_relative_to(home), found
    assert {"demo", "openai"} <= set(found["plugins"]), found

    assert "txgateway" in _run([twistd, "--help"], cwd=outside)

    port = free_port()
    gateway = Twistd([twistd, "-n", "--pidfile=", "txgateway", "--config", str(CONFIG),
                      "--listen", listen_on(port)], outside, base_env=_clean_environ())
    try:
        gateway.wait_healthy(port)
        demo_chat(port)
        gateway.stop()
    finally:
        gateway.kill()
