"""
The published translation vectors (agentgateway's captured payloads and expected output),
found in one place: ``shared/vectors`` beside the repository's checkout, that is beside its
main checkout when the tests run in a git worktree.
"""

from __future__ import annotations

import json
import os
import unittest
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main_checkout(root: str) -> str:
    """The checkout holding the repository: ``root`` itself, unless it is a git worktree."""
    git = os.path.join(root, ".git")
    if not os.path.isfile(git):
        return root
    with open(git) as pointer:  # "gitdir: <main>/.git/worktrees/<name>"
        gitdir = os.path.join(root, pointer.read().partition(":")[2].strip())
    try:
        with open(os.path.join(gitdir, "commondir")) as common:
            return os.path.dirname(os.path.normpath(os.path.join(gitdir, common.read().strip())))
    except OSError:
        return root


AGENTGATEWAY = os.path.join(os.path.dirname(_main_checkout(ROOT)), "shared", "vectors",
                            "agentgateway")

#: Decorates a TestCase that reads the vectors.
needs_vectors = unittest.skipUnless(os.path.isdir(AGENTGATEWAY),
                                    f"no translation vectors at {AGENTGATEWAY}")


def vector(path: str) -> bytes:
    """A vector file's bytes, ``path`` under agentgateway's directory."""
    with open(os.path.join(AGENTGATEWAY, path), "rb") as file:
        return file.read()


def snapshot(path: str) -> Any:
    """The JSON after a snapshot's YAML front matter."""
    text = vector(path).decode()
    return json.loads(text[text.index("\n---\n", 4) + 5:])


def snapshot_text(path: str) -> bytes:
    """A streaming snapshot's text after its front matter."""
    text = vector(path)
    return text[text.index(b"\n---\n", 4) + 5:]


def without_nulls(value: Any) -> Any:
    """``value`` without the members agentgateway serialises as null (absent for us)."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value
