"""treadle-tensorboard's tests load the installed plugin alone, through its entry point."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # reporter_kit
from reporter_kit import only_plugin  # noqa: E402


@pytest.fixture(autouse=True)
def _tensorboard_plugin_loaded(monkeypatch, _isolated_plugins):
    yield from only_plugin(monkeypatch, "tensorboard")
