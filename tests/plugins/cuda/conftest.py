"""treadle-cuda's tests load the installed plugin (with treadle-mps, to check the auto order), like a user's run."""

import pytest


@pytest.fixture(autouse=True)
def _cuda_plugin_loaded(only_plugins):
    only_plugins("cuda", "mps")
