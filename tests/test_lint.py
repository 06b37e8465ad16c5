"""The linter, the formatter and the type checker, run with the tests so that
CI fails on a new finding. Their settings are in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from helpers import REPO

# The package and the runnable scripts are formatted; tests are linted only
# (their long, one-line assertions read better unwrapped).
FORMATTED = ["hubcache", "examples", "benchmarks"]


def _tool(name: str) -> list:
    if shutil.which(name) is None and not _module_exists(name):
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return [sys.executable, "-m", name]


def _module_exists(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _run(args: list) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing():
    r = _run(_tool("ruff") + ["check", "--output-format", "concise", "."])
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format_changes_nothing():
    r = _run(_tool("ruff") + ["format", "--check", *FORMATTED])
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict_finds_nothing():
    r = _run(_tool("mypy"))
    assert r.returncode == 0, r.stdout + r.stderr
