"""treadle-wandb through the plugin authors' conformance kit (offline runs, set up by this folder's conftest)."""

from treadle.testing import ReporterConformance


class TestWandbReporter(ReporterConformance):
    entry_point = "wandb"
    name = "wandb"
