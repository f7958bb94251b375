"""treadle-optuna through the plugin authors' conformance kit (two trials of the kit's tiny task)."""

from treadle.testing import SearchConformance


class TestOptunaSearch(SearchConformance):
    entry_point = "optuna"
    name = "optuna"
