"""Shared test set-up.

Tests run with plugin autoloading off unless they ask for the installed fixture plugins
(``installed_plugins``), so a fixture plugin that is broken on purpose never leaks into an
unrelated test. Each test gets a fresh process-wide plugin manager.
"""

import os
import sys
from pathlib import Path

import pytest

from treadle.plugins import reset_plugin_manager

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _isolated_plugins(monkeypatch):
    for var in ("TREADLE_PLUGINS", "TREADLE_BLOCKED_PLUGINS", "TREADLE_STRICT_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def installed_plugins(monkeypatch):
    """Let entry points load (the fixture distributions under tests/fixtures are installed)."""
    monkeypatch.delenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    reset_plugin_manager()


@pytest.fixture
def only_plugins(monkeypatch, _isolated_plugins):
    """``only_plugins("amp", ...)``: let just these installed entry points load, as a user's run would."""

    def load(*names: str) -> None:
        monkeypatch.delenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
        monkeypatch.setenv("TREADLE_PLUGINS", ",".join(names))
        reset_plugin_manager()

    return load


@pytest.fixture
def run_treadle(tmp_path):
    """Run the ``treadle`` command in a subprocess; returns the CompletedProcess."""
    import subprocess

    def run(*argv, env=None, timeout=300, cwd=None):
        full_env = {**os.environ, **(env or {})}
        return subprocess.run(
            [sys.executable, "-m", "treadle", *map(str, argv)],
            capture_output=True,
            text=True,
            env=full_env,
            timeout=timeout,
            cwd=cwd or tmp_path,
        )

    return run
