"""treadle-mps's tests load the installed plugin (only it, through its entry point), like a user's run."""

import pytest


@pytest.fixture(autouse=True)
def _mps_plugin_loaded(only_plugins):
    only_plugins("mps")
