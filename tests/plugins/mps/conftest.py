"""treadle-mps's tests load the installed plugin (only it, through its entry point), like a user's run."""

import pytest

from treadle.plugins import reset_plugin_manager


@pytest.fixture(autouse=True)
def _mps_plugin_loaded(monkeypatch, _isolated_plugins):
    monkeypatch.delenv("TREADLE_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    monkeypatch.setenv("TREADLE_PLUGINS", "mps")
    reset_plugin_manager()
    yield
    reset_plugin_manager()
