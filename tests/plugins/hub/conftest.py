"""Fixtures of the treadle-hub tests: a Hub-compatible server on 127.0.0.1 and an environment
pointing ``huggingface_hub`` at it (and at a cache inside the test's directory)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from hub_kit import OPEN_RUNS, TOKEN  # noqa: E402,F401  (TOKEN re-exported for the tests)
from hub_server import FakeHub  # noqa: E402


@pytest.fixture
def fake_hub():
    hub = FakeHub().start()
    yield hub
    hub.heal()
    hub.commit_delay = 0
    while OPEN_RUNS:
        OPEN_RUNS.pop().end_run()
    hub.stop()


@pytest.fixture
def hub_env(fake_hub, tmp_path, monkeypatch):
    """The process environment of a run that talks to ``fake_hub``; returns the variables set.

    ``huggingface_hub`` reads some variables once, at import: where it is already imported,
    its constants are pointed at the same places.
    """
    from treadle.plugins import reset_plugin_manager

    home = tmp_path / "hf-home"
    variables = {
        "HF_ENDPOINT": fake_hub.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TREADLE_PLUGINS": "hub", "OMP_NUM_THREADS": "1",
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH",
                 "TREADLE_DISABLE_PLUGIN_AUTOLOAD", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    from huggingface_hub import constants

    for name, value in {"HF_HUB_OFFLINE": False, "ENDPOINT": fake_hub.url, "HF_HOME": str(home),
                        "HUGGINGFACE_CO_URL_TEMPLATE": fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}",
                        "HF_HUB_CACHE": str(home / "hub"), "HF_TOKEN_PATH": str(home / "token")}.items():
        monkeypatch.setattr(constants, name, value)
    reset_plugin_manager()
    yield variables
    reset_plugin_manager()


@pytest.fixture
def hub_cli(hub_env, tmp_path):
    """Run ``treadle train`` (or another command) in a child process with ``hub_env``."""
    import subprocess

    def run(*argv, env=None, timeout=300):
        full = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        full.update(hub_env)
        full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        full.update(env or {})
        return subprocess.run([sys.executable, "-m", "treadle", *map(str, argv)], capture_output=True, text=True,
                              env=full, timeout=timeout, cwd=tmp_path)

    return run
