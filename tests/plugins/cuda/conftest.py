"""treadle-cuda's tests load the installed plugin (with treadle-mps, to check the auto order), like a user's run."""

import pytest

from treadle.plugins import reset_plugin_manager


@pytest.fixture(autouse=True)
def _cuda_plugin_loaded(monkeypatch, _isolated_plugins):
    monkeypatch.delenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TREADLE_PLUGINS", "cuda,mps")
    reset_plugin_manager()
    yield
    reset_plugin_manager()
